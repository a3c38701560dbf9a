package swd

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Flash controller keys (RM0008 3.3.x, RM0368 3.5.x).
const (
	key1    = 0x45670123
	key2    = 0xCDEF89AB
	optKey1 = 0x08192A3B // F4 OPTKEYR
	optKey2 = 0x4C5D6E7F
)

// Register offsets shared by both controllers.
const (
	offKEYR    = 0x04
	offOPTKEYR = 0x08
	offSR      = 0x0C
	offCR      = 0x10
)

// F1 (FPEC) bits.
const (
	f1AR  = 0x14
	f1OBR = 0x1C

	f1PG     = 1 << 0
	f1PER    = 1 << 1
	f1MER    = 1 << 2
	f1OPTPG  = 1 << 4
	f1OPTER  = 1 << 5
	f1STRT   = 1 << 6
	f1LOCK   = 1 << 7
	f1OPTWRE = 1 << 9

	f1BSY      = 1 << 0
	f1PGERR    = 1 << 2
	f1WRPRTERR = 1 << 4
	f1EOP      = 1 << 5

	f1RDPRT   = 1 << 1 // OBR
	f1OptRDP  = 0x1FFFF800
	f1RDPNone = 0xA5
)

// F4 bits.
const (
	f4OPTCR = 0x14

	f4PG     = 1 << 0
	f4SER    = 1 << 1
	f4SNB    = 3 // shift
	f4PSIZE  = 8 // shift; 2 = x32
	f4STRT   = 1 << 16
	f4LOCK   = 1 << 31
	f4BSY    = 1 << 16
	f4PGSERR = 1 << 7
	f4PGPERR = 1 << 6
	f4PGAERR = 1 << 5
	f4WRPERR = 1 << 4
	f4OPERR  = 1 << 1
	f4EOP    = 1 << 0
	f4Errors = f4PGSERR | f4PGPERR | f4PGAERR | f4WRPERR | f4OPERR

	f4OPTLOCK = 1 << 0
	f4OPTSTRT = 1 << 1
	f4RDPNone = 0xAA
	f4RDPL2   = 0xCC
)

var (
	// ErrProtected means the chip's flash is read-out protected (RDP level 1):
	// it cannot be read or written until protection is removed, which erases
	// the whole flash.
	ErrProtected = errors.New("flash is read-out protected (RDP level 1)")
	// ErrFlash means the flash controller reported an error.
	ErrFlash = errors.New("flash controller error")
)

// controller drives one family's flash controller.
type controller struct {
	a   link
	fam *Family
	// scale stretches the busy deadlines (datasheet maxima) for slow links.
	busyTimeout time.Duration
}

func (c *controller) reg(off uint32) uint32 { return c.fam.FlashRegs + off }

// unlock writes the key sequence if the controller is locked. Writing the
// keys to an unlocked F4 controller faults it, so the lock bit is read first.
func (c *controller) unlock(ctx context.Context) error {
	lock := uint32(f1LOCK)
	if c.fam.Controller == "f4" {
		lock = f4LOCK
	}
	cr, err := c.a.read32(ctx, c.reg(offCR))
	if err != nil {
		return err
	}
	if cr&lock == 0 {
		return nil
	}
	if err := c.a.write32(ctx, c.reg(offKEYR), key1); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offKEYR), key2); err != nil {
		return err
	}
	if cr, err = c.a.read32(ctx, c.reg(offCR)); err != nil {
		return err
	}
	if cr&lock != 0 {
		return fmt.Errorf("swd: %s flash controller stays locked after the key sequence: %w", c.fam.Name, ErrFlash)
	}
	return nil
}

func (c *controller) lock(ctx context.Context) error {
	if c.fam.Controller == "f4" {
		return c.a.write32(ctx, c.reg(offCR), f4LOCK)
	}
	return c.a.write32(ctx, c.reg(offCR), f1LOCK)
}

// wait polls SR until the controller is not busy, then checks and clears its
// error flags.
func (c *controller) wait(ctx context.Context, what string, limit time.Duration) error {
	bsy, errs, clear := uint32(f1BSY), uint32(f1PGERR|f1WRPRTERR), uint32(f1PGERR|f1WRPRTERR|f1EOP)
	if c.fam.Controller == "f4" {
		bsy, errs, clear = f4BSY, f4Errors, f4Errors|f4EOP
	}
	deadline := time.Now().Add(limit + c.busyTimeout)
	pause := 50 * time.Microsecond
	for {
		sr, err := c.a.read32(ctx, c.reg(offSR))
		if err != nil {
			return fmt.Errorf("swd: %s: %w", what, err)
		}
		if sr&bsy == 0 {
			if sr&errs != 0 {
				_ = c.a.write32(ctx, c.reg(offSR), clear)
				return fmt.Errorf("swd: %s: SR 0x%08x (%s): %w", what, sr, c.describe(sr), ErrFlash)
			}
			if sr&clear != 0 {
				return c.a.write32(ctx, c.reg(offSR), clear)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swd: %s: still busy after %v: %w", what, limit+c.busyTimeout, ErrFlash)
		}
		if err := sleep(ctx, pause); err != nil {
			return err
		}
		pause = min(2*pause, 5*time.Millisecond)
	}
}

func (c *controller) describe(sr uint32) string {
	var s []string
	add := func(bit uint32, name string) {
		if sr&bit != 0 {
			s = append(s, name)
		}
	}
	if c.fam.Controller == "f4" {
		add(f4PGSERR, "programming sequence error")
		add(f4PGPERR, "parallelism error")
		add(f4PGAERR, "alignment error")
		add(f4WRPERR, "write protected")
		add(f4OPERR, "operation error")
	} else {
		add(f1PGERR, "programming error: location not erased")
		add(f1WRPRTERR, "write protected")
	}
	if len(s) == 0 {
		return "no error bit"
	}
	return fmt.Sprint(s)
}

// erase erases one page (F1, by address) or sector (F4, by index).
func (c *controller) erase(ctx context.Context, index int, addr, size uint32) error {
	what := fmt.Sprintf("erase page at 0x%08x", addr)
	if c.fam.Controller == "f4" {
		what = fmt.Sprintf("erase sector %d (0x%08x, %d KiB)", index, addr, size/1024)
		cr := uint32(f4SER | uint32(index)<<f4SNB | 2<<f4PSIZE)
		if err := c.a.write32(ctx, c.reg(offCR), cr); err != nil {
			return err
		}
		if err := c.a.write32(ctx, c.reg(offCR), cr|f4STRT); err != nil {
			return err
		}
		// RM0368 / STM32F401 datasheet: a 128 KiB sector takes up to 4 s (x32).
		return c.wait(ctx, what, time.Duration(size/1024)*40*time.Millisecond)
	}
	if err := c.a.write32(ctx, c.reg(offCR), f1PER); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(f1AR), addr); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offCR), f1PER|f1STRT); err != nil {
		return err
	}
	return c.wait(ctx, what, 40*time.Millisecond) // STM32F103x8 datasheet: t_ERASE 20-40 ms
}

// unit is the programming width: half-words on F1, words (PSIZE x32) on F4.
func (c *controller) unit() int {
	if c.fam.Controller == "f4" {
		return 4
	}
	return 2
}

// program writes data at addr (aligned to the unit, data a whole number of
// units) into erased flash. A write cut short by a WAIT, FAULT or lost
// answer is resumed: what reached the flash is read back and only the units
// still erased are written again; a unit that holds other bytes is an error.
func (c *controller) program(ctx context.Context, addr uint32, data []byte, progress func(done int)) error {
	u := c.unit()
	cr, size := uint32(f1PG), 16
	if u == 4 {
		cr, size = f4PG|2<<f4PSIZE, 32
	}
	if err := c.a.write32(ctx, c.reg(offCR), cr); err != nil {
		return err
	}
	chunk := 1024 // stay inside one TAR block; one SR check per KiB
	for off := 0; off < len(data); {
		n := min(chunk-int((addr+uint32(off))%uint32(chunk)), len(data)-off)
		err := c.programChunk(ctx, addr+uint32(off), data[off:off+n], size, cr)
		if err != nil {
			return err
		}
		off += n
		if progress != nil {
			progress(off)
		}
	}
	return c.a.write32(ctx, c.reg(offCR), 0)
}

func (c *controller) programChunk(ctx context.Context, at uint32, want []byte, size int, cr uint32) error {
	u := size / 8
	err := c.a.writeMem(ctx, at, size, want)
	if err == nil {
		err = c.wait(ctx, fmt.Sprintf("program 0x%08x+%d", at, len(want)), 10*time.Millisecond)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrFlash) {
			return err
		}
	}
	// Resume: find what did not reach the flash and write only that, for as
	// long as each attempt makes progress.
	left, stalled := len(want)+1, 0
	for stalled < 6 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !c.a.recover(ctx, err) {
			c.a.recover(ctx, ErrNoAck)
		}
		_ = c.wait(ctx, "settle", 10*time.Millisecond)
		if e := c.a.write32(ctx, c.reg(offCR), cr); e != nil {
			err, stalled = e, stalled+1
			continue
		}
		got, e := c.readBytes(ctx, at, len(want))
		if e != nil {
			err, stalled = e, stalled+1
			continue
		}
		n := 0
		for i := 0; i < len(want); i += u {
			if equal(got[i:i+u], want[i:i+u]) {
				continue
			}
			if !erased(got[i : i+u]) {
				return fmt.Errorf("swd: program 0x%08x: 0x%x reads % x after an interrupted write, want % x: %w", at, at+uint32(i), got[i:i+u], want[i:i+u], ErrFlash)
			}
			n += u
		}
		if n == 0 {
			return nil
		}
		if n < left {
			left, stalled = n, 0
		} else {
			stalled++
		}
		err = nil
		for i := 0; i < len(want) && err == nil; i += u {
			if equal(got[i:i+u], want[i:i+u]) {
				continue
			}
			j := i
			for j < len(want) && !equal(got[j:j+u], want[j:j+u]) {
				j += u
			}
			if err = c.a.writeMem(ctx, at+uint32(i), size, want[i:j]); err == nil {
				err = c.wait(ctx, fmt.Sprintf("program 0x%08x+%d", at+uint32(i), j-i), 10*time.Millisecond)
			}
			i = j - u
		}
		if err != nil && errors.Is(err, ErrFlash) {
			return err
		}
		if err == nil {
			err = ErrWait // verify what the last pass wrote
		}
	}
	return err
}

func equal(a, b []byte) bool { return string(a) == string(b) }

func erased(b []byte) bool {
	for _, x := range b {
		if x != 0xff {
			return false
		}
	}
	return true
}

// readBytes reads n bytes at addr through 32-bit accesses.
func (c *controller) readBytes(ctx context.Context, addr uint32, n int) ([]byte, error) {
	return readMem(ctx, c.a, addr, n, nil)
}

func readMem(ctx context.Context, a link, addr uint32, n int, progress func(int)) ([]byte, error) {
	start := addr &^ 3
	end := (addr + uint32(n) + 3) &^ 3
	words, err := a.readWords(ctx, start, int(end-start)/4, func(w int) {
		if progress != nil {
			progress(min(max(4*w-int(addr-start), 0), n))
		}
	})
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 4*len(words))
	for _, w := range words {
		buf = append(buf, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	return buf[addr-start : addr-start+uint32(n)], nil
}

// rdp reports the read-out protection level: 0, 1 or 2.
func (c *controller) rdp(ctx context.Context) (int, error) {
	if c.fam.Controller == "f4" {
		v, err := c.a.read32(ctx, c.reg(f4OPTCR))
		if err != nil {
			return 0, err
		}
		switch (v >> 8) & 0xff {
		case f4RDPNone:
			return 0, nil
		case f4RDPL2:
			return 2, nil
		}
		return 1, nil
	}
	v, err := c.a.read32(ctx, c.reg(f1OBR))
	if err != nil {
		return 0, err
	}
	if v&f1RDPRT != 0 {
		return 1, nil
	}
	return 0, nil
}

// unprotect sets RDP back to level 0. The chip mass-erases its flash as it
// does so; the option bytes take effect after the reset the caller does.
func (c *controller) unprotect(ctx context.Context) error {
	if err := c.unlock(ctx); err != nil {
		return err
	}
	if c.fam.Controller == "f4" {
		if err := c.a.write32(ctx, c.reg(offOPTKEYR), optKey1); err != nil {
			return err
		}
		if err := c.a.write32(ctx, c.reg(offOPTKEYR), optKey2); err != nil {
			return err
		}
		v, err := c.a.read32(ctx, c.reg(f4OPTCR))
		if err != nil {
			return err
		}
		v = v&^(0xff<<8|f4OPTLOCK) | f4RDPNone<<8
		if err := c.a.write32(ctx, c.reg(f4OPTCR), v); err != nil {
			return err
		}
		if err := c.a.write32(ctx, c.reg(f4OPTCR), v|f4OPTSTRT); err != nil {
			return err
		}
		return c.wait(ctx, "remove read-out protection (mass erase)", 16*time.Second)
	}
	if err := c.a.write32(ctx, c.reg(offOPTKEYR), key1); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offOPTKEYR), key2); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offCR), f1OPTER|f1OPTWRE); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offCR), f1OPTER|f1OPTWRE|f1STRT); err != nil {
		return err
	}
	if err := c.wait(ctx, "erase option bytes (mass erase)", time.Second); err != nil {
		return err
	}
	if err := c.a.write32(ctx, c.reg(offCR), f1OPTPG|f1OPTWRE); err != nil {
		return err
	}
	if err := c.a.writeMem(ctx, f1OptRDP, 16, []byte{f1RDPNone, 0x00}); err != nil {
		return err
	}
	return c.wait(ctx, "program RDP option byte", 100*time.Millisecond)
}

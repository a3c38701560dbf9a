package swd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"kiln.dev/kiln/flash"
)

// DP registers (A[3:2]).
const (
	dpDPIDR    = 0x0 // read
	dpABORT    = 0x0 // write
	dpCTRLSTAT = 0x4
	dpSELECT   = 0x8 // write
	dpRDBUFF   = 0xC // read
)

// CTRL/STAT and ABORT bits.
const (
	ctrlStickyOrun = 1 << 1
	ctrlStickyCmp  = 1 << 4
	ctrlStickyErr  = 1 << 5
	ctrlWDataErr   = 1 << 7
	ctrlDbgPwrReq  = 1 << 28
	ctrlDbgPwrAck  = 1 << 29
	ctrlSysPwrReq  = 1 << 30
	ctrlSysPwrAck  = 1 << 31

	abortDAP      = 1 << 0
	abortStkCmp   = 1 << 1
	abortStkErr   = 1 << 2
	abortWDErr    = 1 << 3
	abortOrunErr  = 1 << 4
	abortAllClear = abortStkCmp | abortStkErr | abortWDErr | abortOrunErr
)

// MEM-AP registers (bank in bits [7:4]).
const (
	apCSW = 0x00
	apTAR = 0x04
	apDRW = 0x0C
	apIDR = 0xFC

	cswSize8    = 0
	cswSize16   = 1
	cswSize32   = 2
	cswIncr     = 1 << 4
	cswDbgSwEn  = 1 << 31
	cswMstrDbg  = 1 << 29
	cswHProt1   = 1 << 25
	cswDefaults = cswDbgSwEn | cswMstrDbg | cswHProt1

	tarBlock = 1 << 10 // TAR auto-increment is only guaranteed within 1 KiB
)

var _ link = (*adi)(nil)

// adi is the debug port and MEM-AP 0 of one target behind a DAP. It caches
// SELECT and CSW so that bursts cost only the transfers they need.
type adi struct {
	dap    *DAP
	sel    uint32
	csw    uint32
	selOK  bool // sel is what the DP holds
	cswOK  bool // csw is what the AP holds
	idcode uint32
	// tries bounds recovery from WAIT, FAULT and lost answers per operation.
	tries int
}

// connect resets the line, reads DPIDR, clears sticky errors and powers the
// debug and system domains up.
func (a *adi) connect(ctx context.Context) error {
	var err error
	for i := 0; i < 4; i++ {
		if err = a.connectOnce(ctx); err == nil || errors.Is(err, flash.ErrNoDevice) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (a *adi) connectOnce(ctx context.Context) error {
	a.selOK, a.cswOK = false, false
	if err := a.dap.lineReset(ctx); err != nil {
		return err
	}
	v, err := a.dap.transfer(ctx, []op{{read: true, addr: dpDPIDR}})
	if err != nil {
		return fmt.Errorf("swd: read DPIDR: %w", err)
	}
	a.idcode = v[0]
	if _, err := a.dap.transfer(ctx, []op{
		{addr: dpABORT, value: abortAllClear},
		{addr: dpCTRLSTAT, value: ctrlDbgPwrReq | ctrlSysPwrReq},
	}); err != nil {
		return fmt.Errorf("swd: power-up request: %w", err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		v, err := a.dap.transfer(ctx, []op{{read: true, addr: dpCTRLSTAT}})
		if err != nil {
			return fmt.Errorf("swd: read CTRL/STAT: %w", err)
		}
		if v[0]&(ctrlDbgPwrAck|ctrlSysPwrAck) == ctrlDbgPwrAck|ctrlSysPwrAck {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swd: the debug domain did not power up (CTRL/STAT 0x%08x): %w", v[0], ErrNoAck)
		}
		if err := sleep(ctx, time.Millisecond); err != nil {
			return err
		}
	}
}

// recover brings the DP back after a failed transfer: WAIT aborts the
// stalled AP access, FAULT clears the sticky flags, a lost answer or a
// parity error resets the line. It reports whether the operation may be
// retried.
func (a *adi) recover(ctx context.Context, cause error) bool {
	a.selOK, a.cswOK = false, false
	switch {
	case errors.Is(cause, ErrWait):
		_, err := a.dap.transfer(ctx, []op{{addr: dpABORT, value: abortDAP | abortAllClear}})
		return err == nil
	case errors.Is(cause, ErrFault):
		_, err := a.dap.transfer(ctx, []op{{addr: dpABORT, value: abortAllClear}})
		return err == nil
	case errors.Is(cause, ErrNoAck), errors.Is(cause, ErrParity), errors.Is(cause, flash.ErrNoAnswer):
		// A lost answer leaves the DP in an unknown state: reset the line.
		return a.connect(ctx) == nil
	}
	return false
}

// retry runs f until it succeeds, fails in a way no recovery helps, or has
// been tried a.tries times. f must be safe to run again from its start.
func (a *adi) retry(ctx context.Context, f func() error) error {
	n := a.tries
	if n <= 0 {
		n = 8
	}
	var err error
	for i := 0; i < n; i++ {
		if err = f(); err == nil {
			return nil
		}
		if ctx.Err() != nil || !a.recover(ctx, err) {
			return err
		}
	}
	return err
}

// setup returns the ops that make SELECT point at bank of AP 0 and, when csw
// is not zero (bank 0 only), CSW hold csw, skipping what is already so.
func (a *adi) setup(bank uint32, csw uint32) []op {
	var ops []op
	if !a.selOK || a.sel != bank {
		ops = append(ops, op{addr: dpSELECT, value: bank})
	}
	if csw != 0 && (!a.cswOK || a.csw != csw) {
		ops = append(ops, op{ap: true, addr: apCSW, value: csw})
	}
	return ops
}

// done records what setup's ops made true once they went through.
func (a *adi) done(bank, csw uint32) {
	a.sel, a.selOK = bank, true
	if csw != 0 {
		a.csw, a.cswOK = csw, true
	}
}

// readAP reads an AP 0 register (addr with its bank in bits [7:4]).
func (a *adi) readAP(ctx context.Context, addr uint8) (uint32, error) {
	var v uint32
	err := a.retry(ctx, func() error {
		bank := uint32(addr & 0xF0)
		ops := append(a.setup(bank, 0), op{ap: true, read: true, addr: addr & 0x0C})
		vals, err := a.dap.transfer(ctx, ops)
		if err != nil {
			return err
		}
		a.done(bank, 0)
		v = vals[0]
		return nil
	})
	return v, err
}

// read32 reads one word of target memory.
func (a *adi) read32(ctx context.Context, addr uint32) (uint32, error) {
	var v uint32
	err := a.retry(ctx, func() error {
		csw := uint32(cswDefaults | cswSize32)
		ops := append(a.setup(0, csw), op{ap: true, addr: apTAR, value: addr}, op{ap: true, read: true, addr: apDRW})
		vals, err := a.dap.transfer(ctx, ops)
		if err != nil {
			return err
		}
		a.done(0, csw)
		v = vals[0]
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("swd: read 0x%08x: %w", addr, err)
	}
	return v, nil
}

// write32 writes one word of target memory.
func (a *adi) write32(ctx context.Context, addr, v uint32) error {
	err := a.retry(ctx, func() error {
		csw := uint32(cswDefaults | cswSize32)
		ops := append(a.setup(0, csw), op{ap: true, addr: apTAR, value: addr}, op{ap: true, addr: apDRW, value: v})
		if _, err := a.dap.transfer(ctx, ops); err != nil {
			return err
		}
		a.done(0, csw)
		return nil
	})
	if err != nil {
		return fmt.Errorf("swd: write 0x%08x: %w", addr, err)
	}
	return nil
}

// readBlock reads n words from addr (word aligned), in bursts that stay
// within 1 KiB and fit the probe's packets.
func (a *adi) readWords(ctx context.Context, addr uint32, n int, progress func(words int)) ([]uint32, error) {
	out := make([]uint32, 0, n)
	for len(out) < n {
		at := addr + uint32(4*len(out))
		k := min(n-len(out), a.dap.maxBlockWords(), int(tarBlock-at%tarBlock)/4)
		var vals []uint32
		err := a.retry(ctx, func() error {
			csw := uint32(cswDefaults | cswSize32 | cswIncr)
			if _, err := a.dap.transfer(ctx, append(a.setup(0, csw), op{ap: true, addr: apTAR, value: at})); err != nil {
				return err
			}
			a.done(0, csw)
			var err error
			vals, err = a.dap.block(ctx, op{ap: true, read: true, addr: apDRW}, k, nil)
			return err
		})
		if err != nil {
			return out, fmt.Errorf("swd: read 0x%08x+%d: %w", at, 4*k, err)
		}
		out = append(out, vals...)
		if progress != nil {
			progress(len(out))
		}
	}
	return out, nil
}

// writeMem writes data (little-endian, a whole number of size-bit units)
// to addr with size-bit accesses, in bursts within 1 KiB. It is not
// retried: writes to flash cannot simply be repeated, so the caller decides.
func (a *adi) writeMem(ctx context.Context, addr uint32, size int, data []byte) error {
	u := size / 8
	words := lanes(addr, data, u)
	csw := uint32(cswDefaults | cswIncr | cswSize32)
	if size == 16 {
		csw = cswDefaults | cswIncr | cswSize16
	}
	for i := 0; i < len(words); {
		at := addr + uint32(i*u)
		k := min(len(words)-i, a.dap.maxBlockWords(), int((tarBlock-at%tarBlock)/uint32(u)))
		if _, err := a.dap.transfer(ctx, append(a.setup(0, csw), op{ap: true, addr: apTAR, value: at})); err != nil {
			a.selOK, a.cswOK = false, false
			return fmt.Errorf("swd: write 0x%08x: %w", at, err)
		}
		a.done(0, csw)
		if _, err := a.dap.block(ctx, op{ap: true, addr: apDRW}, 0, words[i:i+k]); err != nil {
			a.selOK, a.cswOK = false, false
			return fmt.Errorf("swd: write 0x%08x+%d: %w", at, u*k, err)
		}
		i += k
	}
	return nil
}

// lanes packs data into MEM-AP data words: one unit of u bytes per word, in
// the byte lane its address selects.
func lanes(addr uint32, data []byte, u int) []uint32 {
	words := make([]uint32, 0, len(data)/u)
	for i := 0; i+u <= len(data); i += u {
		var v uint32
		for k := 0; k < u; k++ {
			v |= uint32(data[i+k]) << (8 * k)
		}
		if u == 2 {
			v <<= 8 * ((addr + uint32(i)) & 2)
		}
		words = append(words, v)
	}
	return words
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

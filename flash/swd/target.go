package swd

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// Options tune a session. The zero value is OpenOCD's defaults: a 4 MHz SWD
// clock, no unprotect.
type Options struct {
	// ClockHz is the SWD clock the probe is asked for.
	ClockHz uint32
	// Unprotect removes RDP level 1, which mass-erases the chip. Without it
	// a protected chip is refused with ErrProtected and nothing is erased.
	Unprotect bool
	// Note receives remarks for the user.
	Note flash.Note
}

// link is a way to a target's memory: ADIv5 through a CMSIS-DAP probe
// (adi), or an ST-LINK's own memory commands (stlink).
type link interface {
	// connect (re)establishes the debug connection from any state.
	connect(ctx context.Context) error
	read32(ctx context.Context, addr uint32) (uint32, error)
	write32(ctx context.Context, addr, v uint32) error
	// readWords reads n words from a word-aligned addr.
	readWords(ctx context.Context, addr uint32, n int, progress func(words int)) ([]uint32, error)
	// writeMem writes little-endian data with size-bit (16 or 32) accesses;
	// it is not retried.
	writeMem(ctx context.Context, addr uint32, size int, data []byte) error
	// recover brings the link back after an error and says whether the
	// operation may be tried again.
	recover(ctx context.Context, cause error) bool
}

// Target is one STM32 behind a CMSIS-DAP probe or an ST-LINK.
type Target struct {
	a      link
	ctl    *controller
	board  *boards.Board
	pages  []boards.Memory
	fam    *Family
	dev    uint16
	rev    uint16
	uid    string
	probe  string // the probe's product and serial
	closer func() error
}

var (
	_ flash.Target     = (*Target)(nil)
	_ flash.Identifier = (*Target)(nil)
)

// Open connects to the chip behind the probe at t, halts it, and checks that
// it is the board's chip: a DEV_ID in no known family, or another DEV_ID than
// the board's signature, is refused (flash.ErrWrongDevice) before anything
// is erased. A read-out protected chip is refused with ErrProtected unless
// opts.Unprotect.
func Open(ctx context.Context, t Transport, b *boards.Board, opts Options) (*Target, error) {
	if opts.ClockHz == 0 {
		opts.ClockHz = 4_000_000
	}
	d := &DAP{t: t}
	if err := d.init(ctx, opts.ClockHz); err != nil {
		return nil, err
	}
	product, _ := d.InfoString(ctx, infoProduct)
	serial, _ := d.InfoString(ctx, infoSerial)
	return open(ctx, &adi{dap: d}, strings.TrimSpace(product+" "+serial), b, opts)
}

// open finishes Open on any link: connect, reset and halt, identify the chip
// and check its protection.
func open(ctx context.Context, l link, probe string, b *boards.Board, opts Options) (*Target, error) {
	want, err := boardDevID(b)
	if err != nil {
		return nil, err
	}
	pages, err := b.Flash.Pages()
	if err != nil {
		return nil, fmt.Errorf("swd: board %s: %w", b.Name, err)
	}
	tg := &Target{a: l, board: b, pages: pages, probe: probe}
	if err := tg.a.connect(ctx); err != nil {
		return nil, err
	}
	if err := resetHalt(ctx, tg.a); err != nil {
		return nil, err
	}
	id, err := tg.a.read32(ctx, DBGMCUIDCode)
	if err != nil {
		return nil, fmt.Errorf("swd: read chip ID: %w", err)
	}
	tg.dev, tg.rev = uint16(id&0xfff), uint16(id>>16)
	if tg.dev == 0x411 { // errata: an early F4 answers as the F2
		tg.dev = 0x413
	}
	fam, err := FamilyOf(tg.dev)
	if err != nil {
		return nil, fmt.Errorf("swd: the chip's DEV_ID 0x%03x is not the board's (%s wants 0x%03x): %w: %w", tg.dev, b.Name, want, err, flash.ErrWrongDevice)
	}
	if tg.dev != want {
		return nil, fmt.Errorf("swd: the chip is an %s (DEV_ID 0x%03x), not the board's %s (0x%03x): %w", fam.Name, tg.dev, b.Name, want, flash.ErrWrongDevice)
	}
	tg.fam = fam
	tg.ctl = &controller{a: tg.a, fam: fam}
	uid, err := readMem(ctx, tg.a, fam.UIDAddr(), 12, nil)
	if err != nil {
		return nil, fmt.Errorf("swd: read unique ID: %w", err)
	}
	tg.uid = strings.ToUpper(hex.EncodeToString(uid))
	level, err := tg.ctl.rdp(ctx)
	if err != nil {
		return nil, fmt.Errorf("swd: read option bytes: %w", err)
	}
	switch {
	case level == 2:
		return nil, fmt.Errorf("swd: %s: RDP level 2: debug access to flash is disabled for good: %w", b.Name, ErrProtected)
	case level == 1 && !opts.Unprotect:
		return nil, fmt.Errorf("swd: %s: %w; removing it erases the whole flash (--unprotect does that)", b.Name, ErrProtected)
	case level == 1:
		opts.Note.Printf("removing read-out protection: the chip mass-erases its flash")
		if err := tg.ctl.unprotect(ctx); err != nil {
			return nil, err
		}
		if err := resetHalt(ctx, tg.a); err != nil {
			return nil, err
		}
		if level, err = tg.ctl.rdp(ctx); err != nil || level != 0 {
			return nil, fmt.Errorf("swd: read-out protection still set after removing it (level %d, %v): %w", level, err, ErrProtected)
		}
	}
	return tg, nil
}

// boardDevID reads the board's STM32 DEV_ID from its signature ("0x433").
func boardDevID(b *boards.Board) (uint16, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(b.Signature, "0x"), 16, 12)
	if err != nil || b.Arch != "cortex-m" {
		return 0, fmt.Errorf("swd: board %s has no STM32 DEV_ID (signature %q): %w", b.Name, b.Signature, flash.ErrBadImage)
	}
	return uint16(v), nil
}

// Write erases the pages or sectors the image touches and programs it.
func (t *Target) Write(ctx context.Context, img *flash.Image, p flash.Progress) error {
	if err := img.Check(t.board); err != nil {
		return err
	}
	touched := map[int]bool{}
	var order []int
	for _, s := range img.Segments {
		for _, i := range boards.PagesIn(t.pages, s.Addr, len(s.Data)) {
			if !touched[i] {
				touched[i] = true
				order = append(order, i)
			}
		}
	}
	if err := t.ctl.unlock(ctx); err != nil {
		return err
	}
	var total, done int64
	for _, i := range order {
		total += int64(t.pages[i].Size)
	}
	for _, i := range order {
		pg := t.pages[i]
		if err := t.ctl.erase(ctx, t.sector(i), pg.Base, pg.Size); err != nil {
			return err
		}
		done += int64(pg.Size)
		p.Report("erase", done, total)
	}
	u := t.ctl.unit()
	size, written := int64(img.Size()), int64(0)
	for _, s := range img.Segments {
		addr, data := align(s.Addr, s.Data, u)
		base := written
		if err := t.ctl.program(ctx, addr, data, func(d int) { p.Report("write", min(base+int64(d), size), size) }); err != nil {
			return err
		}
		written += int64(len(s.Data))
	}
	return t.ctl.lock(ctx)
}

// sector is the controller's number for page i of the board's layout: F4
// sectors count from the start of flash, as the board's layout does.
func (t *Target) sector(i int) int { return i }

// align widens a segment to whole programming units, padding with erased
// bytes.
func align(addr uint32, data []byte, u int) (uint32, []byte) {
	pre := int(addr % uint32(u))
	n := pre + len(data)
	if n%u != 0 {
		n += u - n%u
	}
	if pre == 0 && n == len(data) {
		return addr, data
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = 0xff
	}
	copy(buf[pre:], data)
	return addr - uint32(pre), buf
}

// ReadBack reads a region through the MEM-AP.
func (t *Target) ReadBack(ctx context.Context, r flash.Region, p flash.Progress) ([]byte, error) {
	return readMem(ctx, t.a, r.Addr, r.Size, func(d int) { p.Report("read", int64(d), int64(r.Size)) })
}

// Identity names the chip by its line, DEV_ID, revision and unique ID, and
// the probe by its serial.
func (t *Target) Identity() string {
	return fmt.Sprintf("%s (DEV_ID 0x%03x rev 0x%04x) UID %s via %s", t.fam.Name, t.dev, t.rev, t.uid, t.probe)
}

// UID is the chip's 96-bit unique ID in hex.
func (t *Target) UID() string { return t.uid }

// FlashSizeKiB reads the chip's flash size register.
func (t *Target) FlashSizeKiB(ctx context.Context) (int, error) {
	b, err := readMem(ctx, t.a, t.fam.SizeAddr(), 2, nil)
	if err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint16(b)), nil
}

// Close starts the firmware (vector catch off, system reset) and closes the
// probe.
func (t *Target) Close() error {
	err := resetRun(context.Background(), t.a)
	if t.closer != nil {
		if e := t.closer(); err == nil {
			err = e
		}
	}
	return err
}

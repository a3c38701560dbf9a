package stm32test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/internal/emuwire"
	"kiln.dev/kiln/flash/stm32"
)

// Faults says which line faults to inject (see emuwire.Faults): counts are
// 1-based over the device's life, Rate adds random faults drawn from Seed.
type Faults = emuwire.Faults

// Protocol bytes (AN3155).
const (
	ACK  = 0x79
	NACK = 0x1F
	Init = 0x7F
)

// Commands (AN3155).
const (
	CmdGet         = 0x00
	CmdGetVersion  = 0x01
	CmdGetID       = 0x02
	CmdReadMemory  = 0x11
	CmdGo          = 0x21
	CmdWriteMemory = 0x31
	CmdErase       = 0x43
	CmdExtErase    = 0x44
	CmdWriteProt   = 0x63
	CmdWriteUnprot = 0x73
	CmdReadProt    = 0x82
	CmdReadUnprot  = 0x92
	CmdChecksum    = 0xA1
)

// Timing says how fast the device is.
type Timing struct {
	// Baud paces both directions at a UART's rate (10 bits a byte). Zero
	// delivers bytes as fast as the transport does.
	Baud int
	// Flash takes the datasheet's typical page/sector erase and program
	// times (STM32F1: 20 ms a page, 52.5 µs a half-word; STM32F4 at x32:
	// 250 ms a 16 KiB sector, 550 ms for 64 KiB, 1 s for 128 KiB, 16 µs a word).
	Flash bool
}

// Paced is the timing of a real board at baud.
func Paced(baud int) Timing { return Timing{Baud: baud, Flash: true} }

const infoSize = 0x14

// Device is one emulated STM32 in its system-memory bootloader. Set its
// exported fields before the first Serve.
type Device struct {
	Board *boards.Board
	// PID is the product ID Get ID answers (from the board's signature).
	PID uint16
	// UID is the 96-bit unique ID at the family's address.
	UID [12]byte
	// Version is the bootloader version (0x22 on the F1, 0x31 on the F4).
	Version byte
	// Checksum makes the bootloader list and serve Get Checksum (0xA1), as
	// newer bootloaders do. The F1 and F4 ROMs do not.
	Checksum bool
	Timing   Timing
	Faults   Faults
	// WeakBit makes the Nth Write Memory to flash leave one bit unprogrammed
	// while answering ACK, like a worn cell. With Faults.Rate > 0 it also
	// happens at random.
	WeakBit int

	fam   stm32.Family
	pages []boards.Memory

	mu     sync.Mutex
	flash  []byte
	ram    []byte
	wire   *emuwire.Wire
	rng    *rand.Rand
	writes int
	stats  Stats
	dirty  bool // flash changed since the last session-end hook
	hooks  []func()
}

// Stats counts what the device was asked to do.
type Stats struct {
	Inits    int          // 0x7F autobaud bytes answered
	Commands map[byte]int // commands received, valid or not, by code
	Nacks    int          // NACKs sent
	Erases   []int        // erase count per flash page/sector
	Written  int          // bytes programmed into flash
	Go       uint32       // address of the last Go, 0 if none
}

// New returns a device for board b with erased flash.
func New(b *boards.Board) (*Device, error) {
	if b.Arch != "cortex-m" || !b.Supports("stm32-uart") {
		return nil, fmt.Errorf("stm32test: board %s does not have the STM32 USART bootloader", b.Name)
	}
	pid, err := b.ProductID()
	if err != nil {
		return nil, fmt.Errorf("stm32test: %w", err)
	}
	pages, err := b.Flash.Pages()
	if err != nil {
		return nil, fmt.Errorf("stm32test: board %s: %w", b.Name, err)
	}
	// An unknown product ID is an error, as in the client: the model does
	// not guess a family.
	fam, err := stm32.FamilyOf(pid)
	if err != nil {
		return nil, fmt.Errorf("stm32test: board %s: %w", b.Name, err)
	}
	d := &Device{Board: b, PID: pid, Version: fam.Version, fam: fam, pages: pages,
		flash: bytes.Repeat([]byte{0xFF}, int(b.Flash.Size))}
	if b.RAM != nil {
		d.ram = make([]byte, b.RAM.Size)
	}
	// A unique ID that differs per board and is the same on every run.
	copy(d.UID[:], []byte{0x36, 0xff, 0xd8, 0x05, 0x4e, 0x50, 0x37, 0x32})
	d.UID[8], d.UID[9], d.UID[10], d.UID[11] = byte(pid>>8), byte(pid), byte(len(b.Name)), b.Name[0]
	d.stats.Erases = make([]int, len(pages))
	d.stats.Commands = map[byte]int{}
	return d, nil
}

// Family names the bootloader generation the device models.
func (d *Device) Family() string { return d.fam.Name }

// Commands returns the command list Get answers.
func (d *Device) Commands() []byte {
	cmds := []byte{CmdGet, CmdGetVersion, CmdGetID, CmdReadMemory, CmdGo, CmdWriteMemory, d.eraseCmd(),
		CmdWriteProt, CmdWriteUnprot, CmdReadProt, CmdReadUnprot}
	if d.Checksum {
		cmds = append(cmds, CmdChecksum)
	}
	return cmds
}

func (d *Device) lists(c byte) bool { return bytes.IndexByte(d.Commands(), c) >= 0 }

// Stats returns a copy of the device's counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Commands = map[byte]int{}
	for k, v := range d.stats.Commands {
		s.Commands[k] = v
	}
	s.Erases = append([]int(nil), d.stats.Erases...)
	return s
}

// Pages returns the flash's erase units.
func (d *Device) Pages() []boards.Memory { return append([]boards.Memory(nil), d.pages...) }

// Memory returns a copy of n bytes of flash or RAM at addr.
func (d *Device) Memory(addr uint32, n int) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	mem, off, ok := d.region(addr, n, false)
	if !ok {
		return nil, fmt.Errorf("stm32test: 0x%x+%d is not flash or RAM", addr, n)
	}
	return append([]byte(nil), mem[off:off+n]...), nil
}

// SetMemory stores data at addr directly, as a factory programmer would:
// no erase is needed and no fault applies.
func (d *Device) SetMemory(addr uint32, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	mem, off, ok := d.region(addr, len(data), false)
	if !ok {
		return fmt.Errorf("stm32test: 0x%x+%d is not flash or RAM", addr, len(data))
	}
	copy(mem[off:], data)
	return nil
}

// region finds the flash or RAM slice holding [addr, addr+n).
func (d *Device) region(addr uint32, n int, write bool) ([]byte, int, bool) {
	if d.Board.Flash.Contains(addr, n) {
		return d.flash, int(addr - d.Board.Flash.Base), true
	}
	if r := d.Board.RAM; r != nil && r.Contains(addr, n) {
		if write && addr < r.Base+d.fam.RAMUsed {
			return nil, 0, false
		}
		return d.ram, int(addr - r.Base), true
	}
	return nil, 0, false
}

// info is the device-ID block: flash size register and unique ID.
func (d *Device) info() []byte {
	b := make([]byte, infoSize)
	kib := d.Board.Flash.Size / 1024
	b[d.fam.SizeOff], b[d.fam.SizeOff+1] = byte(kib), byte(kib>>8)
	copy(b[d.fam.UIDOff:], d.UID[:])
	return b
}

// read returns n readable bytes at addr: flash, RAM or the device-ID block.
func (d *Device) read(addr uint32, n int) ([]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if mem, off, ok := d.region(addr, n, false); ok {
		return append([]byte(nil), mem[off:off+n]...), true
	}
	if addr >= d.fam.InfoBase && uint64(addr)+uint64(n) <= uint64(d.fam.InfoBase)+infoSize {
		off := addr - d.fam.InfoBase
		return d.info()[off : off+uint32(n)], true
	}
	return nil, false
}

func (d *Device) validAddr(addr uint32) bool {
	_, ok := d.read(addr, 1)
	return ok
}

// validWordAddr is validAddr for a word-aligned address.
func (d *Device) validWordAddr(addr uint32) bool {
	return addr%4 == 0 && d.validAddr(addr)
}

// Reset pulses NRST: the bootloader starts over and waits for 0x7F.
func (d *Device) Reset() {
	if w := d.getWire(); w != nil {
		w.Reset()
	}
}

func (d *Device) getWire() *emuwire.Wire {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wire
}

// Serve runs the bootloader on rw until rw's Read fails (io.EOF returns nil)
// or ctx ends. A Go command starts "the application": the device then
// ignores the line until Reset. Serve may be called again on a new
// connection; memory and counters persist, and the bootloader starts over.
func (d *Device) Serve(ctx context.Context, rw io.ReadWriter) error {
	d.mu.Lock()
	if d.wire == nil {
		d.wire = emuwire.New(emuwire.Config{Baud: d.Timing.Baud, Pace: d.Timing.Baud > 0, Faults: d.Faults})
		d.rng = rand.New(rand.NewSource(d.Faults.Seed ^ 0x5732))
	}
	w := d.wire
	d.mu.Unlock()
	w.Attach(rw)
	defer d.endSession()
	for {
		err := d.session(ctx, w)
		switch {
		case errors.Is(err, emuwire.ErrReset):
			continue
		case errors.Is(err, io.EOF):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		return fmt.Errorf("stm32test: %w", err)
	}
}

// session is one run of the bootloader from reset.
func (d *Device) session(ctx context.Context, w *emuwire.Wire) error {
	for {
		c, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		if c == Init {
			d.count(func(s *Stats) { s.Inits++ })
			w.Putch(ACK)
			break
		}
	}
	for {
		c, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		x, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		d.count(func(s *Stats) { s.Commands[c]++ })
		if x != c^0xFF || w.Nack() || !d.lists(c) {
			d.nack(w)
			continue
		}
		ran, err := d.command(ctx, w, c)
		if err != nil {
			return err
		}
		if ran {
			d.endSession()
			// The application runs: nothing answers until reset.
			for {
				if _, err := w.Getch(ctx); err != nil {
					return err
				}
			}
		}
	}
}

func (d *Device) count(f func(*Stats)) {
	d.mu.Lock()
	f(&d.stats)
	d.mu.Unlock()
}

func (d *Device) nack(w *emuwire.Wire) {
	d.count(func(s *Stats) { s.Nacks++ })
	w.Putch(NACK)
}

// getAddr reads 4 address bytes and their XOR checksum.
func getAddr(ctx context.Context, w *emuwire.Wire) (uint32, bool, error) {
	b, err := w.GetN(ctx, 5)
	if err != nil {
		return 0, false, err
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), b[0]^b[1]^b[2]^b[3] == b[4], nil
}

// ackAddr acknowledges a command, then reads an address with its checksum
// and answers it: NACK (ok false) for a wrong checksum or an address valid
// refuses, else ACK.
func (d *Device) ackAddr(ctx context.Context, w *emuwire.Wire, valid func(uint32) bool) (addr uint32, ok bool, err error) {
	w.Putch(ACK)
	addr, ok, err = getAddr(ctx, w)
	if err != nil {
		return 0, false, err
	}
	if !ok || !valid(addr) {
		d.nack(w)
		return 0, false, nil
	}
	w.Putch(ACK)
	return addr, true, nil
}

func xor(b []byte) byte {
	var x byte
	for _, c := range b {
		x ^= c
	}
	return x
}

// command runs one acknowledged command. It reports whether a Go started
// the application.
func (d *Device) command(ctx context.Context, w *emuwire.Wire, c byte) (bool, error) {
	switch c {
	case CmdGet:
		cmds := d.Commands()
		w.Putch(ACK, byte(len(cmds)), d.Version)
		w.Putch(cmds...)
		w.Putch(ACK)
	case CmdGetVersion:
		w.Putch(ACK, d.Version, 0x00, 0x00, ACK)
	case CmdGetID:
		w.Putch(ACK, 0x01, byte(d.PID>>8), byte(d.PID), ACK)
	case CmdReadMemory:
		addr, ok, err := d.ackAddr(ctx, w, d.validAddr)
		if err != nil || !ok {
			return false, err
		}
		nb, err := w.GetN(ctx, 2)
		if err != nil {
			return false, err
		}
		data, okr := d.read(addr, int(nb[0])+1)
		if nb[1] != nb[0]^0xFF || !okr {
			d.nack(w)
			return false, nil
		}
		w.Putch(ACK)
		w.Putch(data...)
	case CmdGo:
		addr, ok, err := d.ackAddr(ctx, w, func(a uint32) bool { _, _, ok := d.region(a, 4, false); return ok })
		if err != nil || !ok {
			return false, err
		}
		if err := w.Flush(); err != nil {
			return false, err
		}
		d.count(func(s *Stats) { s.Go = addr })
		return true, nil
	case CmdWriteMemory:
		return false, d.writeMemory(ctx, w)
	case CmdErase:
		return false, d.erase(ctx, w)
	case CmdExtErase:
		return false, d.extErase(ctx, w)
	case CmdChecksum:
		return false, d.checksum(ctx, w)
	case CmdWriteUnprot, CmdReadUnprot:
		// Both end with a system reset; read-out unprotect mass-erases first.
		w.Putch(ACK)
		if c == CmdReadUnprot {
			if err := d.eraseAll(ctx); err != nil {
				return false, err
			}
		}
		w.Putch(ACK)
		if err := w.Flush(); err != nil {
			return false, err
		}
		return false, emuwire.ErrReset
	default:
		// Write protect and read-out protect are listed, as on the ROM, but
		// option bytes are not modelled: refuse rather than pretend.
		d.nack(w)
	}
	return false, nil
}

func (d *Device) writeMemory(ctx context.Context, w *emuwire.Wire) error {
	addr, ok, err := d.ackAddr(ctx, w, d.validWordAddr)
	if err != nil || !ok {
		return err
	}
	nb, err := w.Getch(ctx)
	if err != nil {
		return err
	}
	data, err := w.GetN(ctx, int(nb)+1)
	if err != nil {
		return err
	}
	cs, err := w.Getch(ctx)
	if err != nil {
		return err
	}
	if cs != nb^xor(data) || len(data)%4 != 0 {
		d.nack(w)
		return nil
	}
	d.mu.Lock()
	mem, off, okr := d.region(addr, len(data), true)
	isFlash := okr && d.Board.Flash.Contains(addr, len(data))
	var pgerr bool
	if okr {
		if !isFlash {
			copy(mem[off:], data)
		} else {
			pgerr = d.program(mem[off:off+len(data)], data)
		}
	}
	d.mu.Unlock()
	if isFlash {
		if err := d.flashWait(ctx, d.programTime(len(data))); err != nil {
			return err
		}
	}
	if !okr || pgerr {
		d.nack(w)
		return nil
	}
	w.Putch(ACK)
	return nil
}

// program writes data over flash cells (d.mu held). It reports a PGERR.
func (d *Device) program(cells, data []byte) (pgerr bool) {
	d.writes++
	d.dirty = true
	if d.fam.HalfWord {
		for i := 0; i+1 < len(data); i += 2 {
			old := uint16(cells[i]) | uint16(cells[i+1])<<8
			nw := uint16(data[i]) | uint16(data[i+1])<<8
			if old != 0xFFFF && nw != 0x0000 {
				return true // the program operation is skipped, PGERR is set
			}
			cells[i], cells[i+1] = data[i], data[i+1]
			d.stats.Written += 2
		}
	} else {
		for i := range data {
			cells[i] &= data[i]
		}
		d.stats.Written += len(data)
	}
	if d.writes == d.WeakBit || (d.Faults.Rate > 0 && d.rng.Float64() < d.Faults.Rate) {
		// A worn cell: one programmed bit stays 1, and nobody notices.
		for i := range cells {
			if cells[i] != 0xFF {
				for bit := 0; bit < 8; bit++ {
					if cells[i]&(1<<bit) == 0 {
						cells[i] |= 1 << bit
						return false
					}
				}
			}
		}
	}
	return false
}

func (d *Device) programTime(n int) time.Duration {
	if d.fam.HalfWord {
		return time.Duration(n/2) * 52500 * time.Nanosecond
	}
	return time.Duration(n/4) * 16 * time.Microsecond
}

func (d *Device) eraseTime(size uint32) time.Duration {
	if d.fam.HalfWord {
		return time.Duration(size/1024) * 20 * time.Millisecond
	}
	switch {
	case size <= 16<<10:
		return 250 * time.Millisecond
	case size <= 64<<10:
		return 550 * time.Millisecond
	}
	return time.Second
}

// flashWait takes a flash operation's time when Timing.Flash is set.
func (d *Device) flashWait(ctx context.Context, t time.Duration) error {
	if !d.Timing.Flash || t <= 0 {
		return nil
	}
	tm := time.NewTimer(t)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// erasePages erases the listed pages, or reports false (erasing nothing)
// when one does not exist.
func (d *Device) erasePages(ctx context.Context, list []int) (bool, error) {
	for _, p := range list {
		if p < 0 || p >= len(d.pages) {
			return false, nil
		}
	}
	var t time.Duration
	d.mu.Lock()
	for _, p := range list {
		pg := d.pages[p]
		off := pg.Base - d.Board.Flash.Base
		for i := off; i < off+pg.Size; i++ {
			d.flash[i] = 0xFF
		}
		d.stats.Erases[p]++
		d.dirty = true
		t += d.eraseTime(pg.Size)
	}
	d.mu.Unlock()
	return true, d.flashWait(ctx, t)
}

func (d *Device) eraseAll(ctx context.Context) error {
	all := make([]int, len(d.pages))
	for i := range all {
		all[i] = i
	}
	_, err := d.erasePages(ctx, all)
	return err
}

// ackErase erases the listed pages and answers ACK, or NACK for a page
// that does not exist.
func (d *Device) ackErase(ctx context.Context, w *emuwire.Wire, list []int) error {
	ok, err := d.erasePages(ctx, list)
	if err != nil {
		return err
	}
	if !ok {
		d.nack(w)
		return nil
	}
	w.Putch(ACK)
	return nil
}

// erase is the legacy Erase (0x43): one byte page numbers, 0xFF = global.
func (d *Device) erase(ctx context.Context, w *emuwire.Wire) error {
	w.Putch(ACK)
	n, err := w.Getch(ctx)
	if err != nil {
		return err
	}
	if n == 0xFF {
		cs, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		if cs != 0x00 {
			d.nack(w)
			return nil
		}
		if err := d.eraseAll(ctx); err != nil {
			return err
		}
		w.Putch(ACK)
		return nil
	}
	b, err := w.GetN(ctx, int(n)+2)
	if err != nil {
		return err
	}
	pages, cs := b[:len(b)-1], b[len(b)-1]
	if cs != n^xor(pages) {
		d.nack(w)
		return nil
	}
	list := make([]int, len(pages))
	for i, p := range pages {
		list[i] = int(p)
	}
	return d.ackErase(ctx, w, list)
}

// extErase is Extended Erase (0x44): two byte page numbers, MSB first;
// 0xFFFF mass erase, 0xFFFE/0xFFFD bank erase.
func (d *Device) extErase(ctx context.Context, w *emuwire.Wire) error {
	w.Putch(ACK)
	nb, err := w.GetN(ctx, 2)
	if err != nil {
		return err
	}
	n := int(nb[0])<<8 | int(nb[1])
	if n >= 0xFFF0 {
		cs, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		if cs != nb[0]^nb[1] || n != 0xFFFF {
			// Bank erase: these devices have one bank.
			d.nack(w)
			return nil
		}
		if err := d.eraseAll(ctx); err != nil {
			return err
		}
		w.Putch(ACK)
		return nil
	}
	b, err := w.GetN(ctx, 2*(n+1)+1)
	if err != nil {
		return err
	}
	pages, cs := b[:len(b)-1], b[len(b)-1]
	if cs != nb[0]^nb[1]^xor(pages) {
		d.nack(w)
		return nil
	}
	list := make([]int, n+1)
	for i := range list {
		list[i] = int(pages[2*i])<<8 | int(pages[2*i+1])
	}
	return d.ackErase(ctx, w, list)
}

// checksum is Get Checksum (0xA1): the CRC-32 the STM32 CRC unit computes
// (polynomial 0x04C11DB7, initial 0xFFFFFFFF, 32-bit little-endian words fed
// MSB first, no reflection, no final XOR) over a word-aligned region.
func (d *Device) checksum(ctx context.Context, w *emuwire.Wire) error {
	addr, ok, err := d.ackAddr(ctx, w, d.validWordAddr)
	if err != nil || !ok {
		return err
	}
	n, ok, err := getAddr(ctx, w)
	if err != nil {
		return err
	}
	data, okr := d.read(addr, int(n))
	if !ok || n == 0 || n%4 != 0 || !okr {
		d.nack(w)
		return nil
	}
	w.Putch(ACK)
	crc := crc32STM(data)
	out := []byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)}
	w.Putch(ACK)
	w.Putch(out...)
	w.Putch(xor(out))
	return nil
}

func crc32STM(b []byte) uint32 {
	crc := uint32(0xFFFFFFFF)
	for i := 0; i+3 < len(b); i += 4 {
		crc ^= uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
		for k := 0; k < 32; k++ {
			if crc&0x80000000 != 0 {
				crc = crc<<1 ^ 0x04C11DB7
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// AppFlash returns a copy of the flash (the board's application area).
func (d *Device) AppFlash() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.flash...)
}

// LoadAppFlash replaces the start of the flash with data.
func (d *Device) LoadAppFlash(data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(data) > len(d.flash) {
		return fmt.Errorf("stm32test: state holds %d bytes, the flash %d", len(data), len(d.flash))
	}
	copy(d.flash, data)
	return nil
}

// OnSessionEnd registers f, called when a session that changed flash ends
// (the line closes, or Go starts the application).
func (d *Device) OnSessionEnd(f func()) {
	d.mu.Lock()
	d.hooks = append(d.hooks, f)
	d.mu.Unlock()
}

func (d *Device) endSession() {
	d.mu.Lock()
	hooks, run := d.hooks, d.dirty
	d.dirty = false
	d.mu.Unlock()
	if run {
		for _, f := range hooks {
			f()
		}
	}
}

// state is the saved form of a device.
type state struct {
	Board string `json:"board"`
	PID   uint16 `json:"pid"`
	UID   []byte `json:"uid"`
	Flash []byte `json:"flash"`
	RAM   []byte `json:"ram,omitempty"`
}

// Save writes the device's memory and IDs (JSON).
func (d *Device) Save(w io.Writer) error {
	d.mu.Lock()
	s := state{Board: d.Board.Name, PID: d.PID, UID: d.UID[:], Flash: d.flash, RAM: d.ram}
	err := json.NewEncoder(w).Encode(s)
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("stm32test: save: %w", err)
	}
	return nil
}

// Load restores what Save wrote. The board must be the same.
func (d *Device) Load(r io.Reader) error {
	var s state
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return fmt.Errorf("stm32test: load: %w", err)
	}
	if s.Board != d.Board.Name || len(s.Flash) != len(d.flash) || len(s.RAM) != len(d.ram) || len(s.UID) != len(d.UID) {
		return fmt.Errorf("stm32test: load: state is for %s (%d bytes of flash), this device is %s (%d)", s.Board, len(s.Flash), d.Board.Name, len(d.flash))
	}
	fam, err := stm32.FamilyOf(s.PID)
	if err != nil {
		return fmt.Errorf("stm32test: load: %w", err)
	}
	d.mu.Lock()
	d.PID, d.fam = s.PID, fam
	copy(d.UID[:], s.UID)
	copy(d.flash, s.Flash)
	copy(d.ram, s.RAM)
	d.mu.Unlock()
	return nil
}

// eraseCmd is the erase command the family's ROM lists.
func (d *Device) eraseCmd() byte {
	if d.fam.ExtErase {
		return CmdExtErase
	}
	return CmdErase
}

// Package swdtest models what sits behind a kiln SWD session: an STM32
// target (SW-DP, AHB-AP, flash controller, debug registers) and a CMSIS-DAP
// probe in front of it, with seeded fault injection. The chip families come
// from swd.Families, the same table the client uses.
package swdtest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/swd"
)

// SWD acknowledgements.
const (
	AckOK    = 1
	AckWait  = 2
	AckFault = 4
	AckNone  = 7
)

// Datasheet timings (STM32F103x8 DS5319 table 27, STM32F401xE DS10086
// table 45, typical values; F4 with x32 parallelism).
var (
	f1PageErase = 20 * time.Millisecond
	f1HalfWord  = 52500 * time.Nanosecond
	f4Word      = 16 * time.Microsecond
	f4Sector    = map[uint32]time.Duration{16 << 10: 400 * time.Millisecond, 64 << 10: 1200 * time.Millisecond, 128 << 10: 2000 * time.Millisecond}
)

// chips numbers the chips made, for their unique IDs.
var chips atomic.Uint32

// Chip is an STM32 as its debug port sees it.
type Chip struct {
	mu sync.Mutex

	Family *swd.Family
	DevID  uint16
	Rev    uint16
	// Flash holds the main flash; erased bytes are 0xFF.
	Flash     []byte
	FlashBase uint32
	SRAM      []byte
	UID       [12]byte
	// RDP is the read-out protection option byte as the chip loaded it at
	// reset: 0xA5 (F1) or 0xAA (F4) is level 0.
	RDP byte
	// TimeScale multiplies the datasheet erase and program times; 0 makes
	// the flash instantaneous.
	TimeScale float64

	pages []boards.Memory
	clock *Clock

	// DP
	resetPending bool // a line reset happened; only a DPIDR read is answered
	ctrl         uint32
	sticky       uint32
	selAP        uint32
	selBank      uint32
	rdbuff       uint32
	// AP
	csw, tar uint32
	// core
	dhcsr, demcr uint32
	halted       bool
	// flash controller
	locked, hardLocked bool
	optUnlocked        bool
	keyStage           int
	optKeyStage        int
	cr, sr, ar, optcr  uint32
	optRDP             byte // the option byte as stored (loaded into RDP at reset)
	busyUntil          time.Duration
	erases, programs   int
	resetSeen          bool              // DHCSR.S_RESET_ST: a reset since DHCSR was last read
	cpu                core              // registers and the loader interpreter
	lockup             bool              // the core stopped on an instruction it cannot run
	periph             map[uint32]uint32 // peripheral registers other than flash (RCC, GPIO, ...)
	// Ops counts erases of each page or sector index.
	Erased map[int]int
}

// NewChip makes the chip a board names, with erased flash.
func NewChip(b *boards.Board) (*Chip, error) {
	var dev uint64
	if _, err := fmt.Sscanf(b.Signature, "0x%x", &dev); err != nil {
		return nil, fmt.Errorf("swdtest: board %s: signature %q: %v", b.Name, b.Signature, err)
	}
	fam, err := swd.FamilyOf(uint16(dev))
	if err != nil {
		return nil, err
	}
	pages, err := b.Flash.Pages()
	if err != nil {
		return nil, err
	}
	ram := 20 << 10
	if b.RAM != nil {
		ram = int(b.RAM.Size)
	}
	c := &Chip{Family: fam, DevID: uint16(dev), Rev: 0x1000, FlashBase: b.Flash.Base, Flash: make([]byte, b.Flash.Size),
		SRAM: make([]byte, ram), pages: pages, clock: NewClock(), Erased: map[int]int{}}
	for i := range c.Flash {
		c.Flash[i] = 0xff
	}
	// Every chip has its own unique ID, as real ones do.
	copy(c.UID[:], fmt.Sprintf("KILN%04X%04X", dev, chips.Add(1)&0xffff))
	c.RDP = c.rdpNone()
	c.optRDP = c.RDP
	c.optcr = uint32(c.RDP)<<8 | 0x0fff00ed&^0xff00 | 1
	c.reset(true)
	return c, nil
}

func (c *Chip) rdpNone() byte {
	if c.Family.Controller == "f4" {
		return 0xAA
	}
	return 0xA5
}

// Protect sets RDP level 1, as if the option byte had been written and the
// chip reset.
func (c *Chip) Protect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.optRDP, c.RDP = 0x00, 0x00
	c.optcr = c.optcr&^0xff00 | 0x00<<8
}

func (c *Chip) protected() bool { return c.RDP != c.rdpNone() }

// Clock is the model's time: wall time since the model started plus the time
// the SWD wire and USB would have taken.
type Clock struct {
	start time.Time
	extra time.Duration
}

// NewClock starts a clock.
func NewClock() *Clock { return &Clock{start: time.Now()} }

// Now is the model's current time.
func (k *Clock) Now() time.Duration { return time.Since(k.start) + k.extra }

// Advance adds time the wire took.
func (k *Clock) Advance(d time.Duration) { k.extra += d }

func (c *Chip) busy() bool { return c.clock.Now() < c.busyUntil }

func (c *Chip) startBusy(d time.Duration) {
	c.busyUntil = c.clock.Now() + time.Duration(float64(d)*c.TimeScale)
}

// Reset resets the whole chip, debug port included (a power cycle or a
// brown-out): the host must reset the line and power the debug domain up.
func (c *Chip) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset(true)
}

func (c *Chip) reset(por bool) {
	if por {
		c.resetPending, c.ctrl, c.sticky, c.selAP, c.selBank = true, 0, 0, 0, 0
		c.dhcsr, c.demcr = 0, 0
	}
	c.halted = c.dhcsr&1 != 0 && c.demcr&1 != 0
	c.resetSeen, c.periph = true, map[uint32]uint32{}
	c.lockup = false
	c.cpu = core{xpsr: 1 << 24}
	if len(c.Flash) >= 8 {
		c.cpu.r[13] = binary.LittleEndian.Uint32(c.Flash[0:])
		c.cpu.r[15] = binary.LittleEndian.Uint32(c.Flash[4:]) &^ 1
	}
	if c.halted {
		c.cpu.dfsr |= 1 << 3 // VCATCH
	}
	c.locked, c.hardLocked, c.optUnlocked, c.keyStage, c.optKeyStage = true, false, false, 0, 0
	c.cr, c.sr, c.ar, c.busyUntil = 0, 0, 0, 0
	c.RDP = c.optRDP
	c.optcr = c.optcr&^0xff00 | uint32(c.optRDP)<<8 | 1
}

// DP performs one access to a DP register and returns the ACK.
func (c *Chip) DP(read bool, addr uint8, v uint32) (uint32, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resetPending {
		if read && addr == 0 {
			c.resetPending = false
			return c.Family.DPIDR, AckOK
		}
		return 0, AckNone
	}
	switch {
	case read && addr == 0x0:
		return c.Family.DPIDR, AckOK
	case !read && addr == 0x0: // ABORT
		if v&(1<<2) != 0 {
			c.sticky &^= 1 << 5
		}
		if v&(1<<1) != 0 {
			c.sticky &^= 1 << 4
		}
		if v&(1<<3) != 0 {
			c.sticky &^= 1 << 7
		}
		if v&(1<<4) != 0 {
			c.sticky &^= 1 << 1
		}
		return 0, AckOK
	case read && addr == 0x4:
		r := c.ctrl | c.sticky
		if c.ctrl&(1<<28) != 0 {
			r |= 1 << 29
		}
		if c.ctrl&(1<<30) != 0 {
			r |= 1 << 31
		}
		return r, AckOK
	case !read && addr == 0x4:
		c.ctrl = v &^ (1<<29 | 1<<31 | 0xb2)
		return 0, AckOK
	case !read && addr == 0x8:
		c.selAP, c.selBank = v>>24, v&0xF0
		return 0, AckOK
	case read && addr == 0x8: // RESEND
		return c.rdbuff, AckOK
	case read && addr == 0xC:
		return c.rdbuff, AckOK
	}
	return 0, AckOK
}

// LineReset is a line reset seen on the wire.
func (c *Chip) LineReset() {
	c.mu.Lock()
	c.resetPending = true
	c.mu.Unlock()
}

// AP performs one access to an AP register and returns the ACK.
func (c *Chip) AP(read bool, addr uint8, v uint32) (uint32, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resetPending {
		return 0, AckNone
	}
	if c.sticky&(1<<5) != 0 {
		return 0, AckFault
	}
	if c.ctrl&(1<<28) == 0 {
		// The debug domain is off: the access goes nowhere.
		c.sticky |= 1 << 5
		return 0, AckFault
	}
	if c.selAP != 0 {
		c.rdbuff = 0
		return 0, AckOK
	}
	reg := c.selBank | uint32(addr&0x0C)
	switch reg {
	case 0x00:
		if read {
			c.rdbuff = c.csw | 1<<6 // DeviceEn
			return c.rdbuff, AckOK
		}
		c.csw = v
	case 0x04:
		if read {
			c.rdbuff = c.tar
			return c.tar, AckOK
		}
		c.tar = v
	case 0x0C:
		return c.drw(read, v)
	case 0x10, 0x14, 0x18, 0x1C:
		at := c.tar&^0xF | reg&0xC
		return c.access(read, at, 2, v)
	case 0xF4:
		c.rdbuff = 0
	case 0xF8:
		c.rdbuff = 0xE00FF003
	case 0xFC:
		c.rdbuff = 0x24770011
	}
	if read {
		return c.rdbuff, AckOK
	}
	return 0, AckOK
}

func (c *Chip) drw(read bool, v uint32) (uint32, int) {
	size := c.csw & 7
	inc := (c.csw >> 4) & 3
	n := 1
	if inc == 2 && size < 2 {
		n = 4 >> size // a packed transfer: one DRW access, several bus accesses
	}
	var word uint32
	for i := 0; i < n; i++ {
		r, ack := c.access(read, c.tar, size, v)
		if ack != AckOK {
			return 0, ack
		}
		if n > 1 {
			lane := 8 * (c.tar & 3)
			word |= r & ((uint32(1)<<(8<<size) - 1) << lane)
		} else {
			word = r
		}
		if inc == 1 || inc == 2 {
			// TAR auto-increments only within a block: ADIv5 guarantees
			// 1 KiB; the AHB-AP of Cortex-M3 and M4 wraps at 4 KiB (OpenOCD's
			// cortex_m.c relies on that). Past the block, TAR wraps around.
			c.tar = c.tar&^0xFFF | (c.tar+1<<size)&0xFFF
		}
	}
	if read {
		c.rdbuff = word
	}
	return word, AckOK
}

// access reads or writes the bus at addr with size code (0: 8, 1: 16, 2: 32
// bits), data in the lanes of addr.
func (c *Chip) access(read bool, addr, size, v uint32) (uint32, int) {
	n := uint32(1) << size
	if size > 2 || addr%n != 0 {
		c.sticky |= 1 << 5
		return 0, AckFault
	}
	lane := 8 * (addr & 3)
	if read {
		val, ok, wait := c.read(addr&^3, addr, n)
		if wait {
			return 0, AckWait
		}
		if !ok {
			c.sticky |= 1 << 5
			return 0, AckFault
		}
		c.rdbuff = val
		return val, AckOK
	}
	mask := uint32(1)<<(8*n) - 1
	if n == 4 {
		mask = 0xffffffff
	}
	ok, wait := c.write(addr, n, (v>>lane)&mask)
	if wait {
		return 0, AckWait
	}
	if !ok {
		// Writes are posted: the error shows on the next access.
		c.sticky |= 1 << 5
	}
	return 0, AckOK
}

// read returns the 32-bit word at word (its bytes outside [addr, addr+n) are
// what the bus gives back).
func (c *Chip) read(word, addr, n uint32) (val uint32, ok, wait bool) {
	fb, fe := c.FlashBase, c.FlashBase+uint32(len(c.Flash))
	switch {
	case addr >= fb && addr < fe, addr < uint32(len(c.Flash)):
		if c.busy() {
			return 0, false, true
		}
		if c.protected() {
			return 0, false, false
		}
		off := word - fb
		if addr < uint32(len(c.Flash)) {
			off = word
		}
		return binary.LittleEndian.Uint32(c.Flash[off:]), true, false
	case addr >= 0x20000000 && addr < 0x20000000+uint32(len(c.SRAM)):
		return binary.LittleEndian.Uint32(c.SRAM[word-0x20000000:]), true, false
	case addr == swd.DBGMCUIDCode:
		return uint32(c.Rev)<<16 | uint32(c.DevID), true, false
	case addr >= c.Family.UIDAddr() && addr < c.Family.UIDAddr()+12:
		return binary.LittleEndian.Uint32(c.UID[word-c.Family.UIDAddr():]), true, false
	case addr&^3 == c.Family.SizeAddr()&^3:
		v := uint32(len(c.Flash)/1024) << (8 * (c.Family.SizeAddr() & 3))
		return v, true, false
	case addr >= c.Family.FlashRegs && addr < c.Family.FlashRegs+0x400:
		return c.flashReg(word - c.Family.FlashRegs), true, false
	case addr == 0x1FFFF800 && c.Family.Controller == "f1":
		return uint32(c.optRDP) | uint32(^c.optRDP)<<8 | 0xffff0000, true, false
	case addr == 0xE000EDF0:
		v := c.dhcsr & 0xf
		if c.halted {
			// In Debug state C_HALT reads as 1, whatever halted the core
			// (ARMv7-M C1.6.2); st-flash tests that bit.
			v |= 1<<17 | 1<<1
		}
		v |= 1 << 16 // S_REGRDY
		if c.lockup {
			v |= 1 << 19
		}
		if c.resetSeen {
			v |= 1 << 25
			c.resetSeen = false
		}
		return v, true, false
	case addr == 0xE000EDFC:
		return c.demcr, true, false
	case addr == 0xE000EDF8:
		return c.cpu.dcrdr, true, false
	case addr == 0xE000ED30:
		return c.cpu.dfsr, true, false
	case addr == 0xE000ED00:
		if c.Family.Controller == "f4" {
			return 0x410FC241, true, false
		}
		return 0x411FC231, true, false
	case addr == 0xE000ED0C:
		return 0xFA050000, true, false
	case addr&^3 == 0xE0002000: // FP_CTRL: 6 code and 2 literal comparators
		return 0x260 | c.periph[0xE0002000]&1, true, false
	case addr&^3 == 0xE0001000: // DWT_CTRL: 4 comparators
		return 0x40000000 | c.periph[0xE0001000]&0xfffffff, true, false
	case addr >= 0xE0000000:
		return c.periph[word], true, false // other system registers hold what was written
	case addr >= 0x40000000 && addr < 0x60000000:
		return c.periph[word], true, false
	}
	return 0, false, false
}

func (c *Chip) flashReg(off uint32) uint32 {
	switch off {
	case 0x0C:
		sr := c.sr
		if c.busy() {
			if c.Family.Controller == "f4" {
				sr |= 1 << 16
			} else {
				sr |= 1
			}
		}
		return sr
	case 0x10:
		cr := c.cr
		if c.locked {
			if c.Family.Controller == "f4" {
				cr |= 1 << 31
			} else {
				cr |= 1 << 7
			}
		}
		if c.Family.Controller == "f1" && c.optUnlocked {
			cr |= 1 << 9
		}
		return cr
	case 0x14:
		if c.Family.Controller == "f4" {
			return c.optcr
		}
		return c.ar
	case 0x1C:
		if c.Family.Controller == "f1" && c.protected() {
			return 1 << 1
		}
	}
	return 0
}

func (c *Chip) write(addr, n, v uint32) (ok, wait bool) {
	fb, fe := c.FlashBase, c.FlashBase+uint32(len(c.Flash))
	switch {
	case addr >= fb && addr < fe:
		if c.busy() {
			return false, true
		}
		return c.program(addr-fb, n, v), false
	case addr >= 0x20000000 && addr+n <= 0x20000000+uint32(len(c.SRAM)):
		off := addr - 0x20000000
		for i := uint32(0); i < n; i++ {
			c.SRAM[off+i] = byte(v >> (8 * i))
		}
		return true, false
	case addr >= c.Family.FlashRegs && addr < c.Family.FlashRegs+0x400:
		if n != 4 {
			return false, false
		}
		return c.writeFlashReg(addr-c.Family.FlashRegs, v), false
	case addr == 0x1FFFF800 && c.Family.Controller == "f1":
		if c.cr&(1<<4) == 0 || !c.optUnlocked || n != 2 {
			return false, false
		}
		if c.optRDP != 0xff {
			c.sr |= 1 << 2
			return true, false
		}
		c.optRDP = byte(v)
		c.startBusy(f1HalfWord)
		c.sr |= 1 << 5
		return true, false
	case addr == 0xE000EDF0:
		if v>>16 == 0xA05F {
			c.dhcsr = v & 0xf
			switch {
			case v&2 != 0 && v&1 != 0:
				c.halted = true
			case c.halted && !c.lockup:
				// Resumed: run until a breakpoint (a flash loader) or
				// leave the core running.
				c.halted = false
				if v&1 != 0 && c.run() {
					c.halted = true
				}
			}
		}
		return true, false
	case addr == 0xE000EDF4: // DCRSR
		if v&(1<<16) != 0 {
			c.cpu.setReg(v&0x7f, c.cpu.dcrdr)
		} else {
			c.cpu.dcrdr = c.cpu.reg(v & 0x7f)
		}
		return true, false
	case addr == 0xE000EDF8:
		c.cpu.dcrdr = v
		return true, false
	case addr == 0xE000ED30:
		c.cpu.dfsr &^= v
		return true, false
	case addr == 0xE000EDFC:
		c.demcr = v
		return true, false
	case addr == 0xE000ED0C:
		if v>>16 == 0x05FA && v&(1<<2) != 0 {
			c.reset(false)
		}
		return true, false
	case addr&^3 == 0xE0002000:
		if v&2 != 0 { // KEY
			c.periph[0xE0002000] = v & 1
		}
		return true, false
	case addr >= 0x40000000 && addr < 0x60000000, addr >= 0xE0000000:
		w := addr &^ 3
		lane := 8 * (addr & 3)
		mask := uint32(1)<<(8*n) - 1
		if n == 4 {
			mask = 0xffffffff
		}
		c.periph[w] = c.periph[w]&^(mask<<lane) | (v&mask)<<lane
		return true, false
	}
	return false, false
}

func (c *Chip) writeFlashReg(off, v uint32) bool {
	f4 := c.Family.Controller == "f4"
	switch off {
	case 0x04: // KEYR
		if c.hardLocked || (f4 && !c.locked) {
			c.hardLocked, c.locked = true, true
			return false
		}
		switch {
		case c.keyStage == 0 && v == 0x45670123:
			c.keyStage = 1
		case c.keyStage == 1 && v == 0xCDEF89AB:
			c.keyStage, c.locked = 0, false
		default:
			c.keyStage, c.hardLocked, c.locked = 0, true, true
			return false
		}
	case 0x08: // OPTKEYR
		k1, k2 := uint32(0x45670123), uint32(0xCDEF89AB)
		if f4 {
			k1, k2 = 0x08192A3B, 0x4C5D6E7F
		}
		switch {
		case c.optKeyStage == 0 && v == k1:
			c.optKeyStage = 1
		case c.optKeyStage == 1 && v == k2:
			c.optKeyStage, c.optUnlocked = 0, true
			if f4 {
				c.optcr &^= 1
			}
		default:
			c.optKeyStage = 0
			return false
		}
	case 0x0C: // SR: write 1 to clear
		c.sr &^= v
	case 0x10: // CR
		if c.locked {
			return true // write-protected while locked
		}
		if f4 {
			c.crF4(v)
		} else {
			c.crF1(v)
		}
	case 0x14:
		if !f4 {
			c.ar = v
			return true
		}
		if !c.optUnlocked {
			return true
		}
		c.optcr = v &^ 2
		if v&2 != 0 { // OPTSTRT
			rdp := byte(v >> 8)
			if c.protected() && rdp == 0xAA {
				c.massErase()
			}
			c.optRDP = rdp
			c.startBusy(f4Sector[128<<10] * 4)
		}
	}
	return true
}

func (c *Chip) crF1(v uint32) {
	if v&(1<<7) != 0 {
		c.locked, c.optUnlocked = true, false
		c.cr = 0
		return
	}
	c.cr = v & 0x3ff &^ (1 << 6)
	if v&(1<<6) == 0 {
		return
	}
	switch {
	case v&(1<<1) != 0: // PER
		i := c.pageAt(c.ar)
		if i < 0 {
			c.sr |= 1 << 4
			return
		}
		c.erasePage(i)
		c.startBusy(f1PageErase)
	case v&(1<<2) != 0: // MER
		c.massErase()
		c.startBusy(f1PageErase)
	case v&(1<<5) != 0 && c.optUnlocked: // OPTER
		if c.protected() {
			c.massErase()
		}
		c.optRDP = 0xff
		c.startBusy(f1PageErase)
	}
	c.sr |= 1 << 5
}

func (c *Chip) crF4(v uint32) {
	if v&(1<<31) != 0 {
		c.locked = true
		c.cr = 0
		return
	}
	c.cr = v &^ (1 << 16)
	if v&(1<<16) == 0 {
		return
	}
	switch {
	case v&(1<<1) != 0: // SER
		n := int(v>>3) & 0xf
		if n >= len(c.pages) {
			c.sr |= 1 << 7
			return
		}
		c.erasePage(n)
		c.startBusy(f4Sector[c.pages[n].Size])
	case v&(1<<2) != 0:
		c.massErase()
		c.startBusy(8 * time.Second)
	}
	c.sr |= 1
}

func (c *Chip) pageAt(addr uint32) int {
	for i, p := range c.pages {
		if p.Contains(addr, 1) {
			return i
		}
	}
	return -1
}

func (c *Chip) erasePage(i int) {
	p := c.pages[i]
	off := p.Base - c.FlashBase
	for k := off; k < off+p.Size; k++ {
		c.Flash[k] = 0xff
	}
	c.Erased[i]++
	c.erases++
}

func (c *Chip) massErase() {
	for i := range c.Flash {
		c.Flash[i] = 0xff
	}
}

// program writes n bytes of v at flash offset off under the controller's
// rules.
func (c *Chip) program(off, n, v uint32) bool {
	if c.Family.Controller == "f4" {
		if c.locked || c.cr&1 == 0 {
			c.sr |= 1 << 7 // PGSERR
			return true
		}
		if psize := uint32(1) << ((c.cr >> 8) & 3); psize != n {
			c.sr |= 1 << 6 // PGPERR
			return true
		}
		for i := uint32(0); i < n; i++ {
			c.Flash[off+i] &= byte(v >> (8 * i)) // flash bits only go from 1 to 0
		}
		c.programs++
		c.startBusy(f4Word)
		c.sr |= 1
		return true
	}
	if c.locked || c.cr&1 == 0 || n != 2 {
		return false // bus error
	}
	old := binary.LittleEndian.Uint16(c.Flash[off:])
	if old != 0xffff && v != 0 {
		c.sr |= 1 << 2 // PGERR: not erased
		return true
	}
	binary.LittleEndian.PutUint16(c.Flash[off:], uint16(v))
	c.programs++
	c.startBusy(f1HalfWord)
	c.sr |= 1 << 5
	return true
}

// Page returns a copy of flash at [addr, addr+n).
func (c *Chip) Page(addr uint32, n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.Flash[addr-c.FlashBase:addr-c.FlashBase+uint32(n)]...)
}

// Package dfutest is a model of an STM32 ROM bootloader in USB DFU mode
// (DfuSe): the DFU 1.1 state machine, ST's commands (set address pointer,
// sector and mass erase, leave), flash that can only be programmed where it
// is erased, bwPollTimeout with erase and program times, and STALLs for
// requests that are not valid in the current state. Fault injection (stalls,
// errWRITE, lost requests, short uploads, silent corruption) is driven by a
// seeded random source so failures replay.
//
// Device implements dfu.Controller and dfu.AltSetter, so dfu.Target talks to
// it through the same code path as to a real device. It can also be a USB
// device for unmodified libusb programs: BuildShim compiles a stand-in for
// libusb-1.0 (loaded with LD_PRELOAD) that forwards to ListenUSB. Debian's
// dfu-util lists, writes, reads and leaves the model that way, and kiln's
// gousb adapter is tested through it.
package dfutest

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu"
)

// Timing is how long the model's operations take. The zero Timing makes
// every operation instant.
type Timing struct {
	// Erase is the erase time by sector size; a size not listed scales
	// linearly from the nearest smaller one.
	Erase       map[uint32]time.Duration
	MassErase   time.Duration
	ProgramWord time.Duration // per 32-bit word
	// USBByte is the bus time of one byte in a data stage; Request the
	// setup and status stages of one control transfer.
	USBByte time.Duration
	Request time.Duration
}

// F401 is the STM32F401's typical flash timing at 32-bit parallelism
// (DS9716, "Flash memory programming": 16 µs per word; 250 ms, 550 ms and
// 1 s for 16, 64 and 128 KiB sectors; 8 s for a mass erase), with a
// full-speed USB bus of about 1 MB/s and 50 µs per control transfer.
var F401 = Timing{
	Erase:       map[uint32]time.Duration{16 << 10: 250 * time.Millisecond, 64 << 10: 550 * time.Millisecond, 128 << 10: time.Second},
	MassErase:   8 * time.Second,
	ProgramWord: 16 * time.Microsecond,
	USBByte:     time.Microsecond,
	Request:     50 * time.Microsecond,
}

// Paced returns the datasheet timing of board b's flash: F401 for the
// STM32F4 boards, none (instant) for others.
func Paced(b *boards.Board) Timing {
	if strings.HasPrefix(b.MCU, "stm32f4") {
		return F401
	}
	return Timing{}
}

// EraseTime returns the erase time of a sector of size bytes.
func (t Timing) EraseTime(size uint32) time.Duration {
	if d, ok := t.Erase[size]; ok {
		return d
	}
	var best uint32
	for s := range t.Erase {
		if s <= size && s > best {
			best = s
		}
	}
	if best == 0 {
		for s := range t.Erase {
			if best == 0 || s < best {
				best = s
			}
		}
	}
	if best == 0 {
		return 0
	}
	return time.Duration(int64(t.Erase[best]) * int64(size) / int64(best))
}

// ProgramTime returns the time to program n bytes.
func (t Timing) ProgramTime(n int) time.Duration {
	return t.ProgramWord * time.Duration((n+3)/4)
}

// Faults are injected at random. Each probability applies per request of
// the kind named.
type Faults struct {
	Rand *rand.Rand // nil: no faults
	// Stall: any request is refused with a STALL (device goes to dfuERROR).
	Stall float64
	// WrongState: a GETSTATUS after a DNLOAD loses the request; the device
	// reports dfuIDLE instead of dfuDNBUSY.
	WrongState float64
	// WriteError: a data block is programmed only in part and fails with
	// errWRITE.
	WriteError float64
	// ShortUpload: an UPLOAD returns fewer bytes than asked.
	ShortUpload float64
	// CorruptWrite: a data block is programmed with one bit wrong and the
	// device reports success (no host can mend this; read-back must catch it).
	CorruptWrite float64
	// CorruptUpload: an UPLOAD returns one bit wrong.
	CorruptUpload float64
	// Max stops injecting after this many faults (0: no limit).
	Max int
}

// Stats counts what the device saw.
type Stats struct {
	Transfers    int    // control transfers, SET_INTERFACE included
	Requests     [7]int // by DFU request number
	SetAlts      int
	Erased       []uint32 // sector addresses, in erase order
	MassErases   int
	BytesWritten int
	BytesRead    int
	EarlyPolls   int // requests that came while the device was busy (NAKed)
	Stalls       int
	Injected     map[string]int // faults injected, by Faults field name
	Resets       int
	Busy         time.Duration // erase and program time
}

// Config describes a DfuSe device.
type Config struct {
	VID, PID     uint16
	Serial       string
	Alts         []string // DfuSe layout strings, one per alternate setting
	TransferSize int
	Timing       Timing
}

type memory struct {
	*dfu.Memory
	base uint32
	data []byte
}

type opKind int

const (
	opSetAddress opKind = iota
	opErase
	opMassErase
	opUnprotect
	opWrite
	opManifest
)

type op struct {
	kind opKind
	addr uint32
	data []byte
}

// Device is the model. It is safe for use by one host at a time.
type Device struct {
	mu     sync.Mutex
	cfg    Config
	mems   []*memory
	alt    int
	state  dfu.State
	status dfu.Status
	ptr    uint32
	// pending is the DNLOAD waiting for GETSTATUS; after it starts, the
	// device is busy until busyUntil and then reports result.
	pending   *op
	busyUntil time.Time
	result    dfu.Status
	left      bool
	leftAt    uint32
	debt      time.Duration // bus time not yet slept
	clock     dfu.Clock
	stats     Stats

	// Faults are injected as configured; set before use.
	Faults Faults
}

// New builds a device from its configuration. Memory starts erased (0xff).
func New(cfg Config) (*Device, error) {
	if cfg.TransferSize <= 0 {
		cfg.TransferSize = 2048
	}
	d := &Device{cfg: cfg, state: dfu.DfuIdle, clock: dfu.WallClock{}}
	for i, s := range cfg.Alts {
		m, err := dfu.ParseLayout(i, s)
		if err != nil {
			return nil, fmt.Errorf("dfutest: %w", err)
		}
		if len(m.Sectors) == 0 {
			return nil, fmt.Errorf("dfutest: alt %d has no sectors", i)
		}
		base := m.Sectors[0].Addr
		size := m.Sectors[len(m.Sectors)-1].End() - uint64(base)
		if size > 64<<20 {
			return nil, fmt.Errorf("dfutest: alt %d spans %d bytes; the model holds at most 64 MiB", i, size)
		}
		data := make([]byte, size)
		for j := range data {
			data[j] = 0xff
		}
		d.mems = append(d.mems, &memory{Memory: m, base: base, data: data})
	}
	if len(d.mems) == 0 {
		return nil, fmt.Errorf("dfutest: no alternate settings")
	}
	d.ptr = d.mems[0].base
	d.stats.Injected = map[string]int{}
	return d, nil
}

// F401Alts are the alternate settings of the STM32F401xE ROM bootloader.
var F401Alts = []string{
	"@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg",
	"@Option Bytes  /0x1FFFC000/01*016 e",
	"@OTP Memory /0x1FFF7800/01*512 e,01*016 e",
	"@Device Feature/0xFFFF0000/01*004 e",
}

// ForBoard models the ROM bootloader of a DfuSe board: its flash layout as
// alt 0 (the STM32F401's other memories too, for nucleo-f401re). The flash
// holds a previous program (a byte pattern), so a write that skips the
// erase fails as it would on the chip.
func ForBoard(b *boards.Board) (*Device, error) {
	if !b.Supports("dfuse") {
		return nil, fmt.Errorf("dfutest: board %s does not speak DfuSe", b.Name)
	}
	layout := b.Flash.Layout
	if layout == "" {
		layout = fmt.Sprintf("%02d*%03dKg", b.Flash.Size/b.Flash.Page, b.Flash.Page>>10)
		if b.Flash.Page%1024 != 0 {
			layout = fmt.Sprintf("%02d*%03d g", b.Flash.Size/b.Flash.Page, b.Flash.Page)
		}
	}
	alts := []string{fmt.Sprintf("@Internal Flash  /0x%08X/%s", b.Flash.Base, layout)}
	if b.MCU == "stm32f401re" {
		alts = append(alts, F401Alts[1:]...)
	}
	d, err := New(Config{VID: 0x0483, PID: 0xdf11, Serial: "EMU" + strings.ToUpper(b.MCU), Alts: alts, TransferSize: 2048, Timing: Timing{}})
	if err != nil {
		return nil, err
	}
	m := d.mems[0]
	for i := range m.data {
		m.data[i] = byte(i*7+i>>8) | 0x01
	}
	return d, nil
}

// Descriptor returns what the device's USB descriptors say.
func (d *Device) Descriptor() dfu.Descriptor {
	return dfu.Descriptor{VID: d.cfg.VID, PID: d.cfg.PID, Serial: d.cfg.Serial, Alts: append([]string(nil), d.cfg.Alts...),
		TransferSize: d.cfg.TransferSize, DFUVersion: 0x011a, Attributes: 0x0b}
}

// SetFaults changes the faults injected (safe while a host is connected).
func (d *Device) SetFaults(f Faults) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Faults = f
}

// SetTiming changes the model's timing.
func (d *Device) SetTiming(t Timing) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg.Timing = t
}

// SetClock makes the model keep time on c (share it with the host's
// dfu.Target to run timing exactly without waiting).
func (d *Device) SetClock(c dfu.Clock) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clock = c
}

// VirtualClock is a dfu.Clock whose Sleep advances time at once. A host
// and a model sharing one see the same time line: the model is busy for
// its datasheet times, the host waits its poll timeouts, and Elapsed is
// what the session would take on the wall clock, minus host CPU time.
type VirtualClock struct {
	mu    sync.Mutex
	start time.Time
	now   time.Time
}

// NewVirtualClock starts a virtual clock.
func NewVirtualClock() *VirtualClock {
	t := time.Unix(1<<30, 0)
	return &VirtualClock{start: t, now: t}
}

// Now returns the virtual time.
func (c *VirtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Sleep advances the virtual time by d.
func (c *VirtualClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d > 0 {
		c.mu.Lock()
		c.now = c.now.Add(d)
		c.mu.Unlock()
	}
	return nil
}

// Elapsed returns the virtual time since the clock started.
func (c *VirtualClock) Elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now.Sub(c.start)
}

// Stats returns a copy of the counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Erased = append([]uint32(nil), s.Erased...)
	s.Injected = map[string]int{}
	for k, v := range d.stats.Injected {
		s.Injected[k] = v
	}
	return s
}

// Memory returns a copy of n bytes at addr, straight from the model's
// storage (no transfer is counted): the ground truth for tests.
func (d *Device) Memory(addr uint32, n int) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.mems {
		if addr >= m.base && uint64(addr)+uint64(n) <= uint64(m.base)+uint64(len(m.data)) {
			return append([]byte(nil), m.data[addr-m.base:int(addr-m.base)+n]...), nil
		}
	}
	return nil, fmt.Errorf("dfutest: 0x%08x+%d is not in one memory", addr, n)
}

// Fill sets memory contents directly (a previous program, a test pattern).
func (d *Device) Fill(addr uint32, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.mems {
		if addr >= m.base && uint64(addr)+uint64(len(data)) <= uint64(m.base)+uint64(len(m.data)) {
			copy(m.data[addr-m.base:], data)
			return nil
		}
	}
	return fmt.Errorf("dfutest: 0x%08x+%d is not in one memory", addr, len(data))
}

// Left reports whether the device has left DFU mode, and the address it
// jumped to.
func (d *Device) Left() (bool, uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.left, d.leftAt
}

// Reset is a reset with BOOT0 high: the bootloader starts again in dfuIDLE
// on alt 0. Memory is kept.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.left, d.state, d.status, d.pending, d.alt = false, dfu.DfuIdle, dfu.StatusOK, nil, 0
	d.ptr = d.mems[0].base
	d.busyUntil = time.Time{}
	d.stats.Resets++
}

// inject decides whether to inject a fault of the named kind.
func (d *Device) inject(kind string, p float64) bool {
	f := &d.Faults
	if f.Rand == nil || p <= 0 {
		return false
	}
	if f.Max > 0 {
		total := 0
		for _, v := range d.stats.Injected {
			total += v
		}
		if total >= f.Max {
			return false
		}
	}
	if f.Rand.Float64() >= p {
		return false
	}
	d.stats.Injected[kind]++
	return true
}

// pace accounts bus time and sleeps once at least a millisecond is owed, so
// the model's total time stays right without a timer per transfer.
func (d *Device) pace(ctx context.Context, dur time.Duration) error {
	d.debt += dur
	if d.debt < time.Millisecond {
		return nil
	}
	start := d.clock.Now()
	err := d.clock.Sleep(ctx, d.debt)
	d.debt -= d.clock.Now().Sub(start)
	return err
}

// SetAlt selects an alternate setting (SET_INTERFACE): the device returns
// to dfuIDLE.
func (d *Device) SetAlt(ctx context.Context, alt int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.Transfers++
	d.stats.SetAlts++
	if d.left {
		return fmt.Errorf("dfutest: device left DFU mode: %w", flash.ErrNoDevice)
	}
	if err := d.waitIdleBus(ctx); err != nil {
		return err
	}
	if alt < 0 || alt >= len(d.mems) {
		return fmt.Errorf("dfutest: set interface alt %d: %w", alt, dfu.ErrStall)
	}
	d.alt, d.state, d.status, d.pending = alt, dfu.DfuIdle, dfu.StatusOK, nil
	return nil
}

// waitIdleBus NAKs a request that comes while the device is busy.
func (d *Device) waitIdleBus(ctx context.Context) error {
	if wait := d.busyUntil.Sub(d.clock.Now()); wait > 0 {
		d.stats.EarlyPolls++
		return d.clock.Sleep(ctx, wait)
	}
	return nil
}

func (d *Device) stall(why string) (int, error) {
	d.stats.Stalls++
	d.state, d.status, d.pending = dfu.DfuError, dfu.StatusStalledPkt, nil
	return 0, fmt.Errorf("dfutest: %s: %w", why, dfu.ErrStall)
}

// Control performs one control transfer (dfu.Controller).
func (d *Device) Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.Transfers++
	if int(req) < len(d.stats.Requests) {
		d.stats.Requests[req]++
	}
	if d.left {
		return 0, fmt.Errorf("dfutest: device left DFU mode: %w", flash.ErrNoDevice)
	}
	if err := d.waitIdleBus(ctx); err != nil {
		return 0, err
	}
	if err := d.pace(ctx, d.cfg.Timing.Request+d.cfg.Timing.USBByte*time.Duration(len(data))); err != nil {
		return 0, err
	}
	if idx != 0 {
		return d.stall(fmt.Sprintf("request %d to interface %d", req, idx))
	}
	if d.inject("Stall", d.Faults.Stall) {
		return d.stall(fmt.Sprintf("request %d (injected)", req))
	}
	switch {
	case rType == dfu.TypeIn && req == dfu.ReqGetStatus && len(data) >= 6:
		return d.getStatus(data)
	case rType == dfu.TypeIn && req == dfu.ReqGetState && len(data) >= 1:
		data[0] = byte(d.state)
		return 1, nil
	case rType == dfu.TypeOut && req == dfu.ReqClrStatus:
		if d.state != dfu.DfuError {
			return d.stall("CLRSTATUS outside dfuERROR")
		}
		d.state, d.status = dfu.DfuIdle, dfu.StatusOK
		return 0, nil
	case rType == dfu.TypeOut && req == dfu.ReqAbort:
		switch d.state {
		case dfu.DfuIdle, dfu.DfuDnloadSync, dfu.DfuDnloadIdle, dfu.DfuManifestSync, dfu.DfuUploadIdle:
			d.state, d.pending = dfu.DfuIdle, nil
			return 0, nil
		}
		return d.stall("ABORT in " + d.state.String())
	case rType == dfu.TypeOut && req == dfu.ReqDnload:
		return d.dnload(val, data)
	case rType == dfu.TypeIn && req == dfu.ReqUpload:
		return d.upload(val, data)
	}
	return d.stall(fmt.Sprintf("request 0x%02x/%d in %v", rType, req, d.state))
}

func (d *Device) dnload(block uint16, data []byte) (int, error) {
	if d.state != dfu.DfuIdle && d.state != dfu.DfuDnloadIdle {
		return d.stall("DNLOAD in " + d.state.String())
	}
	if len(data) > d.cfg.TransferSize {
		return d.stall(fmt.Sprintf("DNLOAD of %d bytes, more than wTransferSize", len(data)))
	}
	var o op
	switch {
	case len(data) == 0:
		if d.state != dfu.DfuDnloadIdle {
			return d.stall("zero-length DNLOAD in " + d.state.String())
		}
		d.state, d.pending = dfu.DfuManifestSync, &op{kind: opManifest}
		return 0, nil
	case block == 0:
		switch {
		case data[0] == dfu.CmdSetAddress && len(data) == 5:
			o = op{kind: opSetAddress, addr: binary.LittleEndian.Uint32(data[1:])}
		case data[0] == dfu.CmdErase && len(data) == 5:
			o = op{kind: opErase, addr: binary.LittleEndian.Uint32(data[1:])}
		case data[0] == dfu.CmdErase && len(data) == 1:
			o = op{kind: opMassErase}
		case data[0] == dfu.CmdUnprotect && len(data) == 1:
			o = op{kind: opUnprotect}
		default:
			return d.stall(fmt.Sprintf("unknown DfuSe command % x", data))
		}
	case block == 1:
		return d.stall("DNLOAD block 1")
	default:
		o = op{kind: opWrite, addr: d.ptr + uint32(block-2)*uint32(d.cfg.TransferSize), data: append([]byte(nil), data...)}
	}
	d.state, d.pending = dfu.DfuDnloadSync, &o
	return len(data), nil
}

func (d *Device) getStatus(b []byte) (int, error) {
	var poll time.Duration
	switch d.state {
	case dfu.DfuDnloadSync:
		if d.pending == nil {
			d.state = dfu.DfuDnloadIdle
			break
		}
		if d.inject("WrongState", d.Faults.WrongState) {
			d.state, d.pending = dfu.DfuIdle, nil
			break
		}
		dur, st := d.execute(*d.pending)
		d.pending = nil
		d.stats.Busy += dur
		d.busyUntil = d.clock.Now().Add(dur)
		d.result = st
		d.state = dfu.DfuDnBusy
		poll = (dur + time.Millisecond - 1) / time.Millisecond * time.Millisecond
	case dfu.DfuDnBusy:
		if d.result != dfu.StatusOK {
			d.state, d.status = dfu.DfuError, d.result
		} else {
			d.state = dfu.DfuDnloadIdle
		}
	case dfu.DfuManifestSync:
		d.state = dfu.DfuManifest
		d.left, d.leftAt, d.pending = true, d.ptr, nil
	}
	ms := uint32(poll / time.Millisecond)
	b[0] = byte(d.status)
	b[1], b[2], b[3] = byte(ms), byte(ms>>8), byte(ms>>16)
	b[4] = byte(d.state)
	b[5] = 0
	return 6, nil
}

// find returns the memory of the current alt and the sector holding addr.
func (d *Device) find(addr uint32) (*memory, dfu.Sector, bool) {
	m := d.mems[d.alt]
	s, ok := m.Find(addr)
	return m, s, ok
}

// execute runs a DNLOAD request and returns how long it keeps the device
// busy and the status it ends with.
func (d *Device) execute(o op) (time.Duration, dfu.Status) {
	t := d.cfg.Timing
	switch o.kind {
	case opSetAddress:
		if _, _, ok := d.find(o.addr); !ok {
			return 0, dfu.StatusAddress
		}
		d.ptr = o.addr
		return 0, dfu.StatusOK
	case opErase:
		m, s, ok := d.find(o.addr)
		if !ok || !s.Erasable {
			return 0, dfu.StatusTarget
		}
		fill(m.data[s.Addr-m.base:uint64(s.Addr-m.base)+uint64(s.Size)], 0xff)
		d.stats.Erased = append(d.stats.Erased, s.Addr)
		return t.EraseTime(s.Size), dfu.StatusOK
	case opMassErase, opUnprotect:
		m := d.mems[d.alt]
		for _, s := range m.Sectors {
			if s.Erasable {
				fill(m.data[s.Addr-m.base:uint64(s.Addr-m.base)+uint64(s.Size)], 0xff)
			}
		}
		d.stats.MassErases++
		return t.MassErase, dfu.StatusOK
	case opWrite:
		m := d.mems[d.alt]
		for i := 0; i < len(o.data); {
			s, ok := m.Find(o.addr + uint32(i))
			if !ok || !s.Writable {
				return 0, dfu.StatusTarget
			}
			i = int(s.End() - uint64(o.addr))
		}
		dst := m.data[o.addr-m.base : int(o.addr-m.base)+len(o.data)]
		for i, c := range o.data {
			if dst[i]&c != c { // a 0 bit cannot become 1 without an erase
				return 0, dfu.StatusCheckErased
			}
		}
		dur := t.ProgramTime(len(o.data))
		if d.inject("WriteError", d.Faults.WriteError) {
			n := d.Faults.Rand.IntN(len(o.data))
			program(dst[:n], o.data[:n])
			d.stats.BytesWritten += n
			return t.ProgramTime(n), dfu.StatusWrite
		}
		program(dst, o.data)
		if d.inject("CorruptWrite", d.Faults.CorruptWrite) {
			// Clear one set bit of some byte: the kind of damage flash does.
			r := d.Faults.Rand
			i0 := r.IntN(len(dst))
			for k := range dst {
				i := (i0 + k) % len(dst)
				if dst[i] == 0 {
					continue
				}
				for {
					if bit := byte(1) << r.IntN(8); dst[i]&bit != 0 {
						dst[i] &^= bit
						break
					}
				}
				break
			}
		}
		d.stats.BytesWritten += len(o.data)
		return dur, dfu.StatusOK
	}
	return 0, dfu.StatusUnknown
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// program ANDs src into dst: flash bits only go from 1 to 0.
func program(dst, src []byte) {
	for i := range src {
		dst[i] &= src[i]
	}
}

func (d *Device) upload(block uint16, buf []byte) (int, error) {
	if d.state != dfu.DfuIdle && d.state != dfu.DfuUploadIdle {
		return d.stall("UPLOAD in " + d.state.String())
	}
	if len(buf) > d.cfg.TransferSize {
		return d.stall(fmt.Sprintf("UPLOAD of %d bytes, more than wTransferSize", len(buf)))
	}
	switch block {
	case 0:
		cmds := []byte{dfu.CmdGetCommands, dfu.CmdSetAddress, dfu.CmdErase, dfu.CmdUnprotect}
		d.state = dfu.DfuUploadIdle
		return copy(buf, cmds), nil
	case 1:
		return d.stall("UPLOAD block 1")
	}
	addr := d.ptr + uint32(block-2)*uint32(d.cfg.TransferSize)
	m := d.mems[d.alt]
	for i := 0; i < len(buf); {
		s, ok := m.Find(addr + uint32(i))
		if !ok || !s.Readable {
			return d.stall(fmt.Sprintf("UPLOAD of unreadable 0x%08x", addr+uint32(i)))
		}
		i = int(s.End() - uint64(addr))
	}
	n := copy(buf, m.data[addr-m.base:int(addr-m.base)+len(buf)])
	if n > 0 && d.inject("ShortUpload", d.Faults.ShortUpload) {
		n = d.Faults.Rand.IntN(n)
	}
	if n > 0 && d.inject("CorruptUpload", d.Faults.CorruptUpload) {
		buf[d.Faults.Rand.IntN(n)] ^= 1 << d.Faults.Rand.IntN(8)
	}
	d.stats.BytesRead += n
	if n < len(buf) {
		d.state = dfu.DfuIdle // a short frame ends the upload
	} else {
		d.state = dfu.DfuUploadIdle
	}
	return n, nil
}

// Open models board b's ROM bootloader and returns a target on it, as
// dfu.OpenBoard does for a real device: memories checked against the board,
// leaving DFU mode on Close once a write is proven. It is what
// --port emu:BOARD opens for a DfuSe board.
func Open(b *boards.Board) (*dfu.Target, *Device, error) {
	dev, err := ForBoard(b)
	if err != nil {
		return nil, nil, err
	}
	t, err := dfu.New(dev, dev.Descriptor())
	if err != nil {
		return nil, nil, err
	}
	if err := t.CheckBoard(b); err != nil {
		return nil, nil, err
	}
	t.LeaveWhenProven = true
	return t, dev, nil
}

package dfu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"kiln.dev/kiln/flash"
)

var (
	_ flash.Target     = (*Target)(nil)
	_ flash.Identifier = (*Target)(nil)
)

// Descriptor is what the USB descriptors say about a DFU device.
type Descriptor struct {
	VID, PID uint16
	Serial   string
	// Interface is the DFU interface number (wIndex of every request).
	Interface int
	// Alts holds the name of each alternate setting, in order; on a DfuSe
	// device each is a layout string (see ParseLayout).
	Alts []string
	// TransferSize is wTransferSize from the DFU functional descriptor.
	TransferSize int
	// DFUVersion is bcdDFUVersion: 0x011a for DfuSe, 0x0110 for DFU 1.1.
	DFUVersion uint16
	// Attributes is bmAttributes of the DFU functional descriptor.
	Attributes uint8
}

// String names the device as VID:PID and serial number.
func (d Descriptor) String() string {
	s := fmt.Sprintf("%04x:%04x", d.VID, d.PID)
	if d.Serial != "" {
		s += " serial=" + d.Serial
	}
	return s
}

// DefaultRetries is how often a failed block, erase or read is retried
// after the device has been brought back to dfuIDLE.
const DefaultRetries = 4

// Target is a DfuSe device; it implements flash.Target.
type Target struct {
	p    proto
	c    Controller
	desc Descriptor
	mems []*Memory
	xfer int
	alt  int // selected alternate setting, -1 before the first

	// Retries bounds the retries of one operation (default DefaultRetries).
	Retries int
	// MassErase erases the whole memory once instead of the sectors the
	// image touches.
	MassErase bool
	// Recovered counts operations that failed and succeeded on a retry.
	Recovered int

	// LeaveWhenProven makes Close leave DFU mode and start the program
	// when the last Write was read back byte for byte.
	LeaveWhenProven bool

	closer  interface{ Close() error }
	written *flash.Image // the last image written
	proven  []bool       // which of its segments read back equal
}

// Proven reports whether every segment of the last image written has been
// read back equal to what was written.
func (t *Target) Proven() bool {
	if t.written == nil {
		return false
	}
	for _, p := range t.proven {
		if !p {
			return false
		}
	}
	return true
}

// prove marks the written segments that data, read from addr, holds.
func (t *Target) prove(addr uint32, data []byte) {
	if t.written == nil {
		return
	}
	end := uint64(addr) + uint64(len(data))
	for i, s := range t.written.Segments {
		if uint64(s.Addr) >= uint64(addr) && s.End() <= end {
			t.proven[i] = bytes.Equal(data[s.Addr-addr:uint64(s.Addr-addr)+uint64(len(s.Data))], s.Data)
		}
	}
}

// Close releases the device. With LeaveWhenProven it first leaves DFU mode
// at the start of the last image written, but only if that image was read
// back unchanged: a device that failed verification stays in its
// bootloader.
func (t *Target) Close() error {
	var err error
	if t.LeaveWhenProven && t.Proven() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = t.Leave(ctx, t.written.Segments[0].Addr)
		cancel()
	}
	if t.closer != nil {
		if cerr := t.closer.Close(); err == nil {
			err = cerr
		}
		t.closer = nil
	}
	return err
}

// New returns a Target for a DfuSe device behind c. It does no I/O.
func New(c Controller, d Descriptor) (*Target, error) {
	if d.DFUVersion != 0x011a {
		return nil, fmt.Errorf("dfu: %v: DFU version %x.%02x is not DfuSe (1.1a); kiln writes DfuSe devices only", d, d.DFUVersion>>8, d.DFUVersion&0xff)
	}
	t := &Target{p: proto{c: c, iface: uint16(d.Interface), clock: WallClock{}}, c: c, desc: d, xfer: d.TransferSize, alt: -1, Retries: DefaultRetries}
	if t.xfer <= 0 {
		t.xfer = 2048
	}
	for i, name := range d.Alts {
		m, err := ParseLayout(i, name)
		if err != nil {
			return nil, fmt.Errorf("dfu: %v alt %d: %w", d, i, err)
		}
		t.mems = append(t.mems, m)
	}
	if len(t.mems) == 0 {
		return nil, fmt.Errorf("dfu: %v lists no memories", d)
	}
	return t, nil
}

// SetClock makes the target wait bwPollTimeout on c instead of the wall
// clock.
func (t *Target) SetClock(c Clock) { t.p.clock = c }

// Memories returns the memories the device lists, one per alternate setting.
func (t *Target) Memories() []*Memory { return t.mems }

// Identity names the device.
func (t *Target) Identity() string { return "dfu " + t.desc.String() }

// TransferSize returns the block size of DNLOAD and UPLOAD.
func (t *Target) TransferSize() int { return t.xfer }

// sectorPlan is the part of an image that falls in one sector.
type sectorPlan struct {
	mem    *Memory
	sec    Sector
	chunks []flash.Segment
}

// locate finds the memory and sector holding addr.
func (t *Target) locate(addr uint32) (*Memory, Sector, bool) {
	for _, m := range t.mems {
		if s, ok := m.Find(addr); ok {
			return m, s, true
		}
	}
	return nil, Sector{}, false
}

func (t *Target) memList() string {
	var s []string
	for _, m := range t.mems {
		s = append(s, m.String())
	}
	return strings.Join(s, ", ")
}

// plan splits regions by sector and checks every byte against the layout:
// inside a memory, and writable (write) or readable (read).
func (t *Target) plan(segs []flash.Segment, write bool) ([]sectorPlan, error) {
	var plan []sectorPlan
	for _, seg := range segs {
		addr, end := uint64(seg.Addr), seg.End()
		for addr < end {
			m, s, ok := t.locate(uint32(addr))
			if !ok {
				return nil, fmt.Errorf("dfu: 0x%08x-0x%08x: address 0x%08x is outside every memory %v lists (%s): %w",
					seg.Addr, end, addr, t.desc, t.memList(), flash.ErrBadImage)
			}
			if write && !s.Writable {
				return nil, fmt.Errorf("dfu: 0x%08x-0x%08x: sector 0x%08x+%d of %q is not writable (%s): %w",
					seg.Addr, end, s.Addr, s.Size, m.Name, s.Rights(), flash.ErrBadImage)
			}
			if !write && !s.Readable {
				return nil, fmt.Errorf("dfu: 0x%08x-0x%08x: sector 0x%08x+%d of %q is not readable (%s): %w",
					seg.Addr, end, s.Addr, s.Size, m.Name, s.Rights(), flash.ErrBadImage)
			}
			stop := min(end, s.End())
			c := flash.Segment{Addr: uint32(addr)}
			if seg.Data != nil {
				c.Data = seg.Data[addr-uint64(seg.Addr) : stop-uint64(seg.Addr)]
			} else {
				c.Data = make([]byte, stop-addr)
			}
			if n := len(plan); n > 0 && plan[n-1].mem == m && plan[n-1].sec.Addr == s.Addr {
				plan[n-1].chunks = append(plan[n-1].chunks, c)
			} else {
				plan = append(plan, sectorPlan{mem: m, sec: s, chunks: []flash.Segment{c}})
			}
			addr = stop
		}
	}
	return plan, nil
}

// Check holds the image against the device's memories without any I/O.
func (t *Target) Check(img *flash.Image) error {
	_, err := t.plan(img.Segments, true)
	return err
}

// fatal reports errors a retry cannot mend.
func fatal(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, flash.ErrNoDevice) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var de *DeviceError
	if errors.As(err, &de) {
		switch de.Status {
		case StatusTarget, StatusAddress, StatusFile, StatusFirmware:
			return true
		}
	}
	return false
}

// needsErase reports a block the device could not program because the
// flash under it is not erased.
func needsErase(err error) bool {
	var de *DeviceError
	return errors.As(err, &de) && (de.Status == StatusCheckErased || de.Status == StatusVerify || de.Status == StatusProg)
}

// retry runs op until it succeeds, fails fatally or runs out of attempts,
// bringing the device back to dfuIDLE between attempts. op gets the attempt
// number. stop, if not nil, ends the retries early for errors it selects.
func (t *Target) retry(ctx context.Context, op func(attempt int) error, stop func(error) bool) error {
	var err error
	for attempt := 0; attempt <= t.Retries; attempt++ {
		if attempt > 0 {
			if rerr := t.p.idle(ctx); rerr != nil {
				if fatal(ctx, rerr) {
					return fmt.Errorf("%w (recovering from: %v)", rerr, err)
				}
				continue
			}
		}
		if err = op(attempt); err == nil {
			if attempt > 0 {
				t.Recovered++
			}
			return nil
		}
		if fatal(ctx, err) || (stop != nil && stop(err)) {
			return err
		}
	}
	return fmt.Errorf("%w (gave up after %d attempts)", err, t.Retries+1)
}

func (t *Target) selectAlt(ctx context.Context, m *Memory) error {
	if t.alt == m.Alt {
		return nil
	}
	if a, ok := t.c.(AltSetter); ok {
		if err := a.SetAlt(ctx, m.Alt); err != nil {
			return fmt.Errorf("dfu: select alt %d (%s): %w", m.Alt, m.Name, err)
		}
	} else if m.Alt != 0 {
		return fmt.Errorf("dfu: select alt %d (%s): the connection cannot change alternate settings", m.Alt, m.Name)
	}
	t.alt = m.Alt
	// A new alternate setting starts in dfuIDLE; make sure of it.
	if err := t.p.idle(ctx); err != nil {
		return fmt.Errorf("dfu: alt %d (%s): %w", m.Alt, m.Name, err)
	}
	return nil
}

// command sends a DfuSe command (DNLOAD block 0) and waits for it.
func (t *Target) command(ctx context.Context, cmd byte, addr uint32, withAddr bool) error {
	b := []byte{cmd}
	if withAddr {
		b = binary.LittleEndian.AppendUint32(b, addr)
	}
	if err := t.p.dnload(ctx, 0, b); err != nil {
		return err
	}
	return t.p.settle(ctx, DfuDnloadIdle)
}

func (t *Target) setAddress(ctx context.Context, addr uint32) error {
	if err := t.command(ctx, CmdSetAddress, addr, true); err != nil {
		return fmt.Errorf("set address 0x%08x: %w", addr, err)
	}
	return nil
}

func (t *Target) eraseSector(ctx context.Context, sp sectorPlan) error {
	err := t.retry(ctx, func(int) error { return t.command(ctx, CmdErase, sp.sec.Addr, true) }, nil)
	if err != nil {
		return fmt.Errorf("dfu: erase sector 0x%08x (%d KiB): %w", sp.sec.Addr, sp.sec.Size>>10, err)
	}
	return nil
}

// EraseAll mass-erases the memory of alternate setting alt.
func (t *Target) EraseAll(ctx context.Context, alt int) error {
	if alt < 0 || alt >= len(t.mems) {
		return fmt.Errorf("dfu: mass erase: no alt %d", alt)
	}
	if err := t.selectAlt(ctx, t.mems[alt]); err != nil {
		return err
	}
	err := t.retry(ctx, func(int) error { return t.command(ctx, CmdErase, 0, false) }, nil)
	if err != nil {
		return fmt.Errorf("dfu: mass erase of %q: %w", t.mems[alt].Name, err)
	}
	return nil
}

// Write erases the sectors img touches and programs it. Every byte of img
// is checked against the device's memories before the first transfer.
func (t *Target) Write(ctx context.Context, img *flash.Image, p flash.Progress) error {
	plan, err := t.plan(img.Segments, true)
	if err != nil {
		return err
	}
	t.written, t.proven = nil, nil
	if len(plan) == 0 {
		return fmt.Errorf("dfu: %s: the image is empty: %w", img.Source, flash.ErrBadImage)
	}
	if err := t.start(ctx, plan[0].mem); err != nil {
		return err
	}
	if t.MassErase {
		done := map[int]bool{}
		for _, sp := range plan {
			if sp.sec.Erasable && !done[sp.mem.Alt] {
				p.Report("erase", 0, 1)
				if err := t.EraseAll(ctx, sp.mem.Alt); err != nil {
					return err
				}
				done[sp.mem.Alt] = true
				p.Report("erase", 1, 1)
			}
		}
	} else {
		var total, done int64
		for _, sp := range plan {
			if sp.sec.Erasable {
				total += int64(sp.sec.Size)
			}
		}
		for _, sp := range plan {
			if !sp.sec.Erasable {
				continue
			}
			if err := t.selectAlt(ctx, sp.mem); err != nil {
				return err
			}
			p.Report("erase", done, total)
			if err := t.eraseSector(ctx, sp); err != nil {
				return err
			}
			done += int64(sp.sec.Size)
			p.Report("erase", done, total)
		}
	}
	total, done := int64(img.Size()), int64(0)
	for _, sp := range plan {
		if err := t.selectAlt(ctx, sp.mem); err != nil {
			return err
		}
		n, err := t.writeSector(ctx, sp, func(d int64) { p.Report("write", done+d, total) })
		if err != nil {
			return err
		}
		done += n
	}
	t.written, t.proven = img, make([]bool, len(img.Segments))
	return nil
}

// start brings the device to dfuIDLE on the first memory to be used.
func (t *Target) start(ctx context.Context, m *Memory) error {
	if t.alt == m.Alt {
		if err := t.p.idle(ctx); err != nil {
			return fmt.Errorf("dfu: %v: %w", t.desc, err)
		}
		return nil
	}
	return t.selectAlt(ctx, m)
}

// writeSector programs the image's bytes in one sector. A block that meets
// unerased flash has the sector erased again and written from its start.
func (t *Target) writeSector(ctx context.Context, sp sectorPlan, report func(int64)) (int64, error) {
	var err error
	for round := 0; round < 3; round++ {
		if round > 0 {
			if !sp.sec.Erasable {
				break
			}
			if err := t.p.idle(ctx); err != nil {
				return 0, fmt.Errorf("dfu: %w", err)
			}
			if err := t.eraseSector(ctx, sp); err != nil {
				return 0, err
			}
		}
		var n int64
		n, err = t.writeChunks(ctx, sp, report)
		if err == nil {
			return n, nil
		}
		if !needsErase(err) {
			break
		}
	}
	return 0, err
}

func (t *Target) writeChunks(ctx context.Context, sp sectorPlan, report func(int64)) (int64, error) {
	var done int64
	for _, c := range sp.chunks {
		ptr := c.Addr
		if err := t.retry(ctx, func(int) error { return t.setAddress(ctx, ptr) }, nil); err != nil {
			return done, fmt.Errorf("dfu: %w", err)
		}
		for off := 0; off < len(c.Data); off += t.xfer {
			addr := c.Addr + uint32(off)
			blk := c.Data[off:min(off+t.xfer, len(c.Data))]
			err := t.retry(ctx, func(attempt int) error {
				if attempt > 0 {
					// After recovery, point at this block again.
					if err := t.setAddress(ctx, addr); err != nil {
						return err
					}
					ptr = addr
				}
				num := 2 + (addr-ptr)/uint32(t.xfer)
				if num > 0xffff {
					if err := t.setAddress(ctx, addr); err != nil {
						return err
					}
					ptr, num = addr, 2
				}
				if err := t.p.dnload(ctx, uint16(num), blk); err != nil {
					return err
				}
				return t.p.settle(ctx, DfuDnloadIdle)
			}, needsErase)
			if err != nil {
				return done, fmt.Errorf("dfu: write 0x%08x+%d: %w", addr, len(blk), err)
			}
			done += int64(len(blk))
			report(done)
		}
	}
	return done, nil
}

// ReadBack uploads a region. Every byte must lie in a readable sector.
func (t *Target) ReadBack(ctx context.Context, r flash.Region, p flash.Progress) ([]byte, error) {
	if r.Size <= 0 {
		return nil, nil
	}
	plan, err := t.plan([]flash.Segment{{Addr: r.Addr, Data: make([]byte, r.Size)}}, false)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, r.Size)
	// Consecutive sectors of one memory are read in one run.
	for i := 0; i < len(plan); {
		j := i + 1
		for j < len(plan) && plan[j].mem == plan[i].mem && plan[j].chunks[0].Addr == plan[j-1].sec.Addr+plan[j-1].sec.Size {
			j++
		}
		first, last := plan[i].chunks[0], plan[j-1].chunks[len(plan[j-1].chunks)-1]
		start, end := first.Addr, last.End()
		if err := t.selectAlt(ctx, plan[i].mem); err != nil {
			return nil, err
		}
		if err := t.p.idle(ctx); err != nil {
			return nil, fmt.Errorf("dfu: %w", err)
		}
		out, err = t.readRun(ctx, start, int(end-uint64(start)), out, func(d int64) { p.Report("read", int64(len(out))+d, int64(r.Size)) })
		if err != nil {
			return nil, err
		}
		i = j
	}
	t.prove(r.Addr, out)
	return out, nil
}

// readRun uploads n bytes from addr and appends them to out.
func (t *Target) readRun(ctx context.Context, addr uint32, n int, out []byte, report func(int64)) ([]byte, error) {
	ptr := addr
	point := func(a uint32) error {
		if err := t.setAddress(ctx, a); err != nil {
			return err
		}
		// UPLOAD is valid in dfuIDLE, not after a DNLOAD.
		if err := t.p.abort(ctx); err != nil {
			return err
		}
		ptr = a
		return nil
	}
	if err := t.retry(ctx, func(int) error { return point(addr) }, nil); err != nil {
		return nil, fmt.Errorf("dfu: read 0x%08x: %w", addr, err)
	}
	buf := make([]byte, t.xfer)
	for off := 0; off < n; off += t.xfer {
		a := addr + uint32(off)
		want := min(t.xfer, n-off)
		err := t.retry(ctx, func(attempt int) error {
			num := 2 + (a-ptr)/uint32(t.xfer)
			if attempt > 0 || num > 0xffff {
				if err := point(a); err != nil {
					return err
				}
				num = 2
			}
			got, err := t.p.upload(ctx, uint16(num), buf[:want])
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("upload block %d: short read: %d of %d bytes", num, got, want)
			}
			return nil
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("dfu: read 0x%08x+%d: %w", a, want, err)
		}
		out = append(out, buf[:want]...)
		report(int64(off + want))
	}
	// Leave the upload states so the next operation starts from dfuIDLE.
	if err := t.p.idle(ctx); err != nil {
		return nil, fmt.Errorf("dfu: after read: %w", err)
	}
	return out, nil
}

// Leave ends DFU mode: the device jumps to the program at addr (the flash
// base, where the vector table is). The device may vanish before it
// answers the last GETSTATUS; that is not an error.
func (t *Target) Leave(ctx context.Context, addr uint32) error {
	m, _, ok := t.locate(addr)
	if !ok {
		return fmt.Errorf("dfu: leave: 0x%08x is outside every memory (%s): %w", addr, t.memList(), flash.ErrBadImage)
	}
	if err := t.selectAlt(ctx, m); err != nil {
		return err
	}
	if err := t.retry(ctx, func(int) error { return t.setAddress(ctx, addr) }, nil); err != nil {
		return fmt.Errorf("dfu: leave: %w", err)
	}
	if err := t.p.dnload(ctx, 2, nil); err != nil {
		return fmt.Errorf("dfu: leave: %w", err)
	}
	st, err := t.p.getStatus(ctx)
	if errors.Is(err, ErrStall) {
		return fmt.Errorf("dfu: leave: %w", err)
	}
	if err != nil {
		return nil // the device left before it answered
	}
	if st.Status != StatusOK {
		return fmt.Errorf("dfu: leave: %w", &DeviceError{Status: st.Status, State: st.State})
	}
	return nil
}

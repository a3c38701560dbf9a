// Package abtest is an in-process device for the A/B update state machine:
// partitions in memory, a boot control — the Raspberry Pi firmware's
// tryboot (a one-shot flag that a reboot request sets and any boot clears,
// autoboot.txt [all] and [tryboot]; New) or U-Boot running kiln's boot.scr
// over uboot.env (a boot counter, a fallback after bootlimit trial boots,
// a system that marks itself good; NewUBoot) — an update lock that a boot
// releases, and faults by typed step — power cut before or in the middle
// of a step, the answer to a step lost after it took effect, a trial kernel
// that never comes up, a failing health check — never by matching command
// text.
package abtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/image/disk"
)

// Step names a Device method, for faults and the step log.
type Step string

// The steps of ab.Device.
const (
	Inspect Step = "inspect"
	Lock    Step = "lock"
	Write   Step = "write"
	Arm     Step = "arm"
	Reboot  Step = "reboot"
	Health  Step = "health"
	Commit  Step = "commit"
)

// Steps lists every step an update takes, in order.
var Steps = []Step{Inspect, Lock, Write, Arm, Reboot, Health, Commit}

// FaultKind is what goes wrong.
type FaultKind int

const (
	// Cut: the power goes during the step. A write leaves half its bytes;
	// every other step does not happen. The device boots again after
	// DownDials failed connection attempts.
	Cut FaultKind = iota
	// LoseAnswer: the step happens, then the connection drops before its
	// answer arrives.
	LoseAnswer
	// Corrupt: a write stores one byte wrong (a failing card) and the
	// device hashes what it stored.
	Corrupt
	// Torn: the power goes in the middle of a sector. The card is taken to
	// write whole sectors (a Cut of uboot.env's one-sector rewrite writes
	// nothing); Torn is the card that does not: half the sector lands.
	// Partition writes take it as a Cut.
	Torn
)

func (k FaultKind) String() string {
	return [...]string{"power cut", "lost answer", "corrupt write", "torn sector"}[k]
}

// Fault strikes the Nth time (from 1) Step runs.
type Fault struct {
	Step Step
	N    int
	Kind FaultKind
}

// Device is the device: it outlives connections and boots.
type Device struct {
	// HealthCheck decides the health check on the running slot; nil passes.
	HealthCheck func(ctx context.Context, running disk.Slot, cmd string) error
	// BadTrial makes every trial boot fail (the new kernel never comes up;
	// the watchdog restarts the device on its committed slot).
	BadTrial bool
	// DownDials is how many connection attempts fail while the device boots.
	DownDials int
	// MarksGood makes a U-Boot device's system mark a trial good itself
	// when it boots (fw_setenv upgrade_available 0), as the appliance's
	// init does when its root holds etc/kiln/healthy.
	MarksGood bool

	mu       sync.Mutex
	table    *disk.Table
	layout   *disk.Metadata
	parts    map[int][]byte
	all, try int  // autoboot.txt: [all] and [tryboot] boot_partition
	tryFlag  bool // the one-shot tryboot flag
	running  disk.Slot
	bootID   int
	booted   time.Time
	lock     string
	down     int
	faults   []Fault
	counts   map[Step]int
	log      []string
	powerCut int
	corrupt  bool
	env      []byte // U-Boot devices: uboot.env; nil for tryboot
	boots    []string
}

// New returns a device with table and layout (kiln.json with two slots),
// committed to and running the slot named committed.
func New(table *disk.Table, layout *disk.Metadata, committed string) (*Device, error) {
	slots, err := layout.ABSlots()
	if err != nil {
		return nil, err
	}
	d := &Device{table: table, layout: layout, parts: map[int][]byte{}, counts: map[Step]int{}, DownDials: 2}
	for _, s := range slots {
		if s.Name == committed {
			d.all = s.Boot
		}
	}
	if d.all == 0 {
		return nil, fmt.Errorf("abtest: no slot %q", committed)
	}
	d.boot()
	return d, nil
}

// Fail adds faults.
func (d *Device) Fail(f ...Fault) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.faults = append(d.faults, f...)
}

// Boots returns what the boot loader said at each boot (U-Boot devices:
// the slot, the boot counter and any fallback).
func (d *Device) Boots() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.boots...)
}

// SetPartition sets a partition's bytes.
func (d *Device) SetPartition(n int, b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.parts[n] = append([]byte(nil), b...)
}

// Partition returns a copy of partition n's first size bytes.
func (d *Device) Partition(n int, size int64) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]byte, size)
	copy(out, d.parts[n])
	return out
}

// Running returns the slot the device runs and the one it boots by default.
func (d *Device) Running() (running, committed disk.Slot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env != nil {
		return d.running, d.ubootCommitted()
	}
	return d.running, d.slotByBoot(d.all)
}

// PowerCuts is how many times the power went.
func (d *Device) PowerCuts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.powerCut
}

// Log returns the steps the device saw, with their outcome.
func (d *Device) Log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

func (d *Device) slotByBoot(b int) disk.Slot {
	for _, s := range d.layout.Slots {
		if s.Boot == b {
			return s
		}
	}
	return disk.Slot{}
}

// boot starts the device as the firmware does: the [tryboot] partition if
// the one-shot flag is set (and clears it), else [all]. Called with mu held.
func (d *Device) boot() {
	d.bootID++
	d.booted = time.Now()
	d.lock = "" // /run is a tmpfs
	if d.env != nil {
		d.running = d.ubootBoot()
		return
	}
	bp := d.all
	if d.tryFlag && d.try != 0 {
		bp = d.try
	}
	d.tryFlag = false
	if d.BadTrial && bp != d.all {
		bp = d.all // the trial kernel hangs; the watchdog boots [all]
	}
	d.running = d.slotByBoot(bp)
}

// PowerCycle cuts the power and lets the device boot again, as pulling
// the plug would: no reboot request, no tryboot flag.
func (d *Device) PowerCycle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.powerCycle()
}

// powerCycle is a power cut: the flag is lost with the power.
func (d *Device) powerCycle() {
	d.powerCut++
	d.tryFlag = false
	d.down = d.DownDials
	d.boot()
}

// Dial connects to the device.
func (d *Device) Dial(ctx context.Context) (ab.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down > 0 {
		d.down--
		return nil, fmt.Errorf("abtest: dial: %w", ab.ErrConnLost)
	}
	return &conn{d: d, bootID: d.bootID}, nil
}

var _ ab.Device = (*conn)(nil)

// conn is one connection; it dies with the boot it was made in.
type conn struct {
	d      *Device
	bootID int
	closed bool
}

var errClosed = errors.New("abtest: use of a closed connection")

// step runs fn as step s under the device's lock, with the faults for s:
// a cut runs cut (the partial effect) instead of fn and power-cycles the
// device; a lost answer runs fn and drops the connection.
func (c *conn) step(s Step, fn func() error, cut func(torn bool)) error {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.closed {
		return errClosed
	}
	if c.bootID != d.bootID {
		return fmt.Errorf("abtest: %s: %w", s, ab.ErrConnLost)
	}
	d.counts[s]++
	for _, f := range d.faults {
		if f.Step != s || f.N != d.counts[s] {
			continue
		}
		d.log = append(d.log, fmt.Sprintf("%s #%d: %v", s, d.counts[s], f.Kind))
		switch f.Kind {
		case Cut, Torn:
			if cut != nil {
				cut(f.Kind == Torn)
			}
			d.powerCycle()
		case LoseAnswer:
			if err := fn(); err != nil {
				return err
			}
			c.closed = true
		case Corrupt:
			d.corrupt = true
			err := fn()
			d.corrupt = false
			return err
		}
		return fmt.Errorf("abtest: %s: %w", s, ab.ErrConnLost)
	}
	err := fn()
	d.log = append(d.log, fmt.Sprintf("%s #%d: %v", s, d.counts[s], errString(err)))
	return err
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func (c *conn) Inspect(ctx context.Context) (*ab.State, error) {
	var st *ab.State
	err := c.step(Inspect, func() error {
		d := c.d
		committed := d.slotByBoot(d.all)
		if d.env != nil {
			// What kiln reads from uboot.env over the device's connection.
			name, err := ab.UBootCommitted(d.env)
			if err != nil {
				return err
			}
			if committed = d.slotByName(name); committed.Name == "" {
				return fmt.Errorf("uboot.env commits slot %q, which kiln.json does not list: %w", name, ab.ErrLayout)
			}
		}
		st = &ab.State{Table: d.table, Layout: d.layout, Committed: committed, Running: d.running,
			BootID: fmt.Sprint(d.bootID), Uptime: time.Since(d.booted).Seconds()}
		return nil
	}, nil)
	return st, err
}

func (c *conn) Lock(ctx context.Context, owner string) error {
	return c.step(Lock, func() error {
		if c.d.lock != "" && c.d.lock != owner {
			return fmt.Errorf("%w: held by %q", ab.ErrBusy, c.d.lock)
		}
		c.d.lock = owner
		return nil
	}, nil)
}

func (c *conn) Unlock(ctx context.Context, owner string) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	if !c.closed && c.bootID == c.d.bootID && c.d.lock == owner {
		c.d.lock = ""
	}
}

func (c *conn) WriteVerified(ctx context.Context, part disk.Partition, src io.ReaderAt, n int64, phase string) (string, error) {
	data := make([]byte, n)
	if _, err := src.ReadAt(data, 0); err != nil {
		return "", err
	}
	var sum string
	write := func(k int64) {
		p, ok := c.d.parts[part.Number]
		if !ok || int64(len(p)) < part.Size {
			p = append(p, make([]byte, part.Size-int64(len(p)))...)
		}
		copy(p, data[:k])
		if c.d.corrupt && k > 0 {
			p[k/2] ^= 0x01
		}
		c.d.parts[part.Number] = p
	}
	err := c.step(Write, func() error {
		if p, ok := c.d.table.Partition(part.Number); !ok || p != part || n > part.Size {
			return fmt.Errorf("abtest: write %d bytes to partition %d: no such partition or too small", n, part.Number)
		}
		write(n)
		h := sha256.Sum256(c.d.parts[part.Number][:n])
		sum = hex.EncodeToString(h[:])
		return nil
	}, func(bool) { write(n / 2) })
	return sum, err
}

func (c *conn) ArmTrial(ctx context.Context, committed, trial disk.Slot) error {
	if c.d.env != nil {
		arm := func(f ab.EnvFile) error { return ab.UBootArm(ctx, f, committed.Name, trial.Name) }
		return c.step(Arm, func() error { return arm(c.d.envFile(false, false)) }, func(torn bool) { arm(c.d.envFile(true, torn)) })
	}
	return c.step(Arm, func() error {
		c.d.all, c.d.try = committed.Boot, trial.Boot
		return nil
	}, nil)
}

func (c *conn) Reboot(ctx context.Context, trial bool) error {
	err := c.step(Reboot, func() error {
		if c.d.env != nil && !trial {
			// U-Boot would boot a pending trial again: cancel it first.
			if err := ab.UBootDisarm(ctx, c.d.envFile(false, false)); err != nil {
				return err
			}
		}
		if trial {
			c.d.tryFlag = true
		}
		c.d.down = c.d.DownDials
		c.d.boot()
		return nil
	}, func(torn bool) {
		if c.d.env != nil && !trial {
			ab.UBootDisarm(ctx, c.d.envFile(true, torn))
		}
	})
	if errors.Is(err, ab.ErrConnLost) || err == nil {
		// A reboot's answer is always lost: the connection goes with it.
		return fmt.Errorf("abtest: reboot: %w", ab.ErrConnLost)
	}
	return err
}

func (c *conn) Commit(ctx context.Context, slot, previous disk.Slot) error {
	if c.d.env != nil {
		commit := func(f ab.EnvFile) error { return ab.UBootCommit(ctx, f, slot.Name) }
		return c.step(Commit, func() error { return commit(c.d.envFile(false, false)) }, func(torn bool) { commit(c.d.envFile(true, torn)) })
	}
	return c.step(Commit, func() error {
		c.d.all, c.d.try = slot.Boot, previous.Boot
		return nil
	}, nil)
}

func (c *conn) Health(ctx context.Context, cmd string) error {
	var check func(context.Context, disk.Slot, string) error
	var running disk.Slot
	err := c.step(Health, func() error {
		check, running = c.d.HealthCheck, c.d.running
		return nil
	}, nil)
	if err != nil || check == nil {
		return err
	}
	return check(ctx, running, cmd) // outside the lock: it may block until ctx ends
}

func (c *conn) Close() error {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.closed = true
	return nil
}

// Same reports whether partition n's first len(want) bytes are want.
func (d *Device) Same(n int, want []byte) bool {
	return bytes.Equal(d.Partition(n, int64(len(want))), want)
}

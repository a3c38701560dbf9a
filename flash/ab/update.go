package ab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image/disk"
)

// Stats is what a Device may tell about its work: bytes sent to it and
// whether a device-side helper did the writing.
type Stats interface {
	Sent() int64
	UsedHelper() bool
}

// Update installs img on the device's inactive slot, proves the write by the
// device's own hash, trial-boots it, runs the health check and commits — or
// rolls back. It returns ErrRolledBack (wrapped) when the device ended on its
// old slot. name names the device in messages.
func Update(ctx context.Context, dial Dialer, name string, img *Image, opts Options) (*Result, error) {
	return run(ctx, dial, name, img, opts, (*machine).trial)
}

// trial is the second half of Update: the trial boot of the armed slot,
// its health check, the commit or the rollback.
func (m *machine) trial(ctx context.Context, res *Result, old, target disk.Slot) (*Result, error) {
	name, opts := m.name, m.opts
	var err error
	opts.Log("%s: slot %s written and verified on the device; trial boot", name, target.Name)
	if err := m.reboot(ctx, true); err != nil {
		return res, err
	}
	m.stats(res)
	if err := m.dev.Lock(ctx, opts.Owner); err != nil {
		opts.Log("%s: trial boot: %v", name, err)
	}
	if m.st.Running != target {
		return m.rollback(ctx, res, old, fmt.Sprintf("trial boot came up on slot %s, not %s", m.st.Running.Name, target.Name))
	}
	hctx, cancel := context.WithTimeout(ctx, opts.HealthTimeout)
	err = m.dev.Health(hctx, opts.Health)
	cancel()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return m.rollback(ctx, res, old, fmt.Sprintf("update interrupted during the health check (%v)", ctx.Err()))
		case errors.Is(err, context.DeadlineExceeded):
			return m.rollback(ctx, res, old, fmt.Sprintf("health check did not finish in %v", opts.HealthTimeout))
		}
		return m.rollback(ctx, res, old, fmt.Sprintf("health check failed: %v", err))
	}
	if err := m.dev.Commit(ctx, target, old); err != nil {
		// The commit may have landed although its answer did not.
		opts.Log("%s: commit: %v; reconnecting to see whether it landed", name, err)
		if err := m.confirmCommit(ctx, target, old); err != nil {
			res.RolledBack = errors.Is(err, ErrRolledBack)
			m.stats(res)
			return res, fmt.Errorf("%s: commit: %w", name, err)
		}
	}
	res.Committed = true
	m.stats(res)
	opts.Log("%s: committed slot %s", name, target.Name)
	return res, nil
}

// Stage is the first half of Update: it installs img on the device's
// inactive slot, proves the write by the device's own hash and arms the
// trial boot of that slot, then leaves the device running. Which boot
// tries the slot is the boot loader's: with U-Boot's boot counter the next
// one, whatever restarts the device; with the firmware's tryboot only a
// `reboot '0 tryboot'`. The boot loader falls back by itself unless the
// slot is committed; nothing here checks the trial's health or commits it.
func Stage(ctx context.Context, dial Dialer, name string, img *Image, opts Options) (*Result, error) {
	return run(ctx, dial, name, img, opts, func(m *machine, _ context.Context, res *Result, _, target disk.Slot) (*Result, error) {
		m.opts.Log("%s: slot %s written, verified on the device and armed for its next boot", name, target.Name)
		return res, nil
	})
}

// run connects, stages img (machine.stage) and goes on with then; the
// lock and the connection are released at the end.
func run(ctx context.Context, dial Dialer, name string, img *Image, opts Options,
	then func(m *machine, ctx context.Context, res *Result, old, target disk.Slot) (*Result, error)) (*Result, error) {
	opts.defaults()
	start := time.Now()
	res := &Result{Device: name, Derivation: img.Layout.Derivation}
	defer func() { res.DurationSec = time.Since(start).Seconds() }()
	m := &machine{dial: dial, name: name, opts: opts}
	defer m.close()
	defer m.unlock(ctx)
	old, target, err := m.stage(ctx, img, res)
	if err != nil {
		return res, err
	}
	return then(m, ctx, res, old, target)
}

// unlock releases the update lock, even when ctx is cancelled.
func (m *machine) unlock(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if m.dev != nil {
		m.dev.Unlock(uctx, m.opts.Owner)
	}
	cancel()
}

// stage connects, takes the lock, returns an abandoned trial to the
// committed slot, writes and proves the inactive slot and arms its trial.
func (m *machine) stage(ctx context.Context, img *Image, res *Result) (old, target disk.Slot, err error) {
	name, opts := m.name, m.opts
	fail := func(err error) (disk.Slot, disk.Slot, error) { return disk.Slot{}, disk.Slot{}, err }
	if err := m.connect(ctx); err != nil {
		return fail(err)
	}
	// One update at a time: the lock lives until the trial reboot.
	if err := m.dev.Lock(ctx, opts.Owner); err != nil {
		return fail(fmt.Errorf("%s: %w", name, err))
	}
	rem := m.st
	if rem.Trial() && rem.Uptime >= 0 && rem.Uptime < opts.TrialGrace.Seconds() {
		// A young trial boot without a lock: its updater may be reconnecting
		// after the trial reboot (before it re-takes the lock).
		return fail(fmt.Errorf("%s: %w: slot %s is in a trial boot %.0f s old; its update may still be reconnecting (retry after %v)",
			name, ErrBusy, rem.Running.Name, rem.Uptime, opts.TrialGrace))
	}
	if rem.Trial() {
		// A trial from an earlier, interrupted update: back to the committed slot first.
		opts.Log("%s: running uncommitted slot %s; rebooting to committed slot %s", name, rem.Running.Name, rem.Committed.Name)
		if err := m.reboot(ctx, false); err != nil {
			return fail(err)
		}
		if m.st.Trial() {
			return fail(fmt.Errorf("%s: still not on the committed slot after a reboot", name))
		}
		if err := m.dev.Lock(ctx, opts.Owner); err != nil {
			return fail(fmt.Errorf("%s: %w", name, err))
		}
		rem = m.st
	}
	ab, err := rem.Layout.ABSlots()
	if err != nil {
		return fail(fmt.Errorf("%s: %w", name, err))
	}
	old, target = rem.Committed, ab[0]
	if target == old {
		target = ab[1]
	}
	res.From, res.To = old.Name, target.Name
	tBoot, ok1 := rem.Table.Partition(target.Boot)
	tRoot, ok2 := rem.Table.Partition(target.Root)
	if !ok1 || !ok2 {
		return fail(fmt.Errorf("%s: %w: slot %s partitions missing", name, ErrLayout, target.Name))
	}
	if img.Boot.Size > tBoot.Size || img.Root.Size > tRoot.Size {
		return fail(fmt.Errorf("%s: the image's slot (boot %d, root %d bytes) does not fit the device's slot %s (boot %d, root %d bytes)",
			name, img.Boot.Size, img.Root.Size, target.Name, tBoot.Size, tRoot.Size))
	}
	boot, err := img.SlotBoot(tRoot.PartUUID)
	if err != nil {
		return fail(err)
	}

	writeStart := time.Now()
	if res.RootSHA256, err = m.writeProved(ctx, tRoot, img.RootReader(), img.Root.Size, "root"); err != nil {
		return fail(err)
	}
	if res.BootSHA256, err = m.writeProved(ctx, tBoot, bytes.NewReader(boot), img.Boot.Size, "boot"); err != nil {
		return fail(err)
	}
	res.BytesImage = img.Root.Size + img.Boot.Size
	res.WriteSec = time.Since(writeStart).Seconds()
	m.stats(res)

	// Arm the trial boot of the new slot.
	if err := m.dev.ArmTrial(ctx, old, target); err != nil {
		return fail(fmt.Errorf("%s: arm trial boot: %w", name, err))
	}
	return old, target, nil
}

// writeProved has the device write and hash a partition, and compares its
// hash with the image's, computed here while the device works.
func (m *machine) writeProved(ctx context.Context, part disk.Partition, src io.ReaderAt, n int64, phase string) (string, error) {
	local := make(chan string, 1)
	lerr := make(chan error, 1)
	go func() {
		h := sha256.New()
		_, err := io.Copy(h, io.NewSectionReader(src, 0, n))
		local <- hex.EncodeToString(h.Sum(nil))
		lerr <- err
	}()
	got, err := m.dev.WriteVerified(ctx, part, src, n, phase)
	want := <-local
	if err == nil {
		err = <-lerr
	}
	if err != nil {
		return "", fmt.Errorf("%s: write %s (partition %d): %w", m.name, phase, part.Number, err)
	}
	if got != want {
		return got, fmt.Errorf("%s: partition %d (%s): device sha256 %s, image %s: %w", m.name, part.Number, phase, got, want, flash.ErrVerify)
	}
	return got, nil
}

// machine holds the connection an update uses and what the device last said.
type machine struct {
	dial Dialer
	name string
	opts Options
	dev  Device
	st   *State
}

func (m *machine) close() {
	if m.dev != nil {
		m.dev.Close()
	}
}

func (m *machine) stats(res *Result) {
	if s, ok := m.dev.(Stats); ok {
		res.BytesSent, res.UsedHelper = s.Sent(), res.UsedHelper || s.UsedHelper()
	}
}

// connect dials the device and inspects it.
func (m *machine) connect(ctx context.Context) error {
	d, err := m.dial(ctx)
	if err != nil {
		return err
	}
	st, err := d.Inspect(ctx)
	if err != nil {
		d.Close()
		return err
	}
	m.dev, m.st = d, st
	return nil
}

// reconnect opens a new connection and inspects the device, keeping the old
// connection until the new one works.
func (m *machine) reconnect(ctx context.Context) (Device, *State, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	d, err := m.dial(dctx)
	cancel()
	if err != nil {
		return nil, nil, err
	}
	st, err := d.Inspect(ctx)
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return d, st, nil
}

func (m *machine) swap(d Device, st *State) {
	if m.dev != nil {
		m.dev.Close()
	}
	m.dev, m.st = d, st
}

// wait calls try every Poll until it is done, the boot timeout passes or
// ctx ends.
func (m *machine) wait(ctx context.Context, what string, try func() (bool, error)) error {
	deadline := time.Now().Add(m.opts.BootTimeout)
	var last error
	for {
		done, err := try()
		if done {
			return err
		}
		if err != nil {
			last = err
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s within %v (last: %v)", what, m.opts.BootTimeout, last)
		}
		select {
		case <-time.After(m.opts.Poll):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reboot restarts the device (into the armed trial if trial is set), waits
// for a new boot and reconnects.
func (m *machine) reboot(ctx context.Context, trial bool) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := m.dev.Reboot(rctx, trial)
	cancel()
	if err != nil && !errors.Is(err, ErrConnLost) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: reboot: %w", m.name, err)
	}
	m.dev.Close()
	before := m.st.BootID
	err = m.wait(ctx, "device did not come back after reboot", func() (bool, error) {
		d, st, err := m.reconnect(ctx)
		if err != nil {
			return false, err
		}
		if st.BootID == before {
			d.Close() // not down yet
			return false, nil
		}
		m.dev, m.st = d, st
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	return nil
}

// rollback brings a failed trial back to the committed slot old.
func (m *machine) rollback(ctx context.Context, res *Result, old disk.Slot, reason string) (*Result, error) {
	res.RolledBack, res.Reason = true, reason
	m.opts.Log("%s: %s; rolling back to slot %s", m.name, reason, old.Name)
	// Even when kiln itself is being stopped: a robot must not be left
	// running a slot that never passed its health check.
	rctx := context.WithoutCancel(ctx)
	// The connection may have gone with the failure (a lost answer, a power
	// cut after which a boot counter boots the trial again): the rollback
	// starts from a new one and what the device says now.
	err := m.wait(rctx, "device unreachable for the rollback", func() (bool, error) {
		d, st, err := m.reconnect(rctx)
		if err != nil {
			return false, err
		}
		m.swap(d, st)
		return true, nil
	})
	if err != nil {
		return res, fmt.Errorf("%s: %s, and the rollback failed: %w", m.name, reason, err)
	}
	if m.st.Running != old {
		if err := m.reboot(rctx, false); err != nil {
			return res, fmt.Errorf("%s: %s, and the rollback reboot failed: %w", m.name, reason, err)
		}
	}
	if m.st.Running != old {
		return res, fmt.Errorf("%s: %s, and after the rollback it runs slot %s", m.name, reason, m.st.Running.Name)
	}
	return res, fmt.Errorf("%s: %s: %w (device is on slot %s)", m.name, reason, ErrRolledBack, old.Name)
}

// confirmCommit reconnects after a commit whose answer was lost and finds
// out what the device holds: committed to target (done), still in the same
// trial boot (commit again), or restarted on the old slot before the commit
// reached the medium (ErrRolledBack).
func (m *machine) confirmCommit(ctx context.Context, target, old disk.Slot) error {
	trial := m.st
	m.dev.Close()
	var final error
	err := m.wait(ctx, "device unreachable after the commit was sent", func() (bool, error) {
		d, st, err := m.reconnect(ctx)
		switch {
		case err != nil:
			return false, err
		case st.Committed == target:
			m.swap(d, st)
			return true, nil
		case st.BootID == trial.BootID && st.Running == target:
			if err := d.Commit(ctx, target, old); err != nil {
				d.Close()
				return false, err
			}
			m.swap(d, st)
			return true, nil
		}
		m.swap(d, st)
		final = fmt.Errorf("the device restarted on slot %s before the commit reached it: %w", st.Running.Name, ErrRolledBack)
		return true, nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %v", ErrCommitUnknown, ctx.Err())
		}
		return fmt.Errorf("%w: %v; `kiln fleet status` shows the slot it runs", ErrCommitUnknown, err)
	}
	return final
}

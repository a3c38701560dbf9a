package sshdev

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/image/disk"
)

// commitFault is a connection whose first Commit goes wrong, at the typed
// step (never by matching the commands that carry it): the request is lost
// (the connection drops before it is sent), the answer is lost (it drops
// after the commit ran), or the power goes as it starts.
type commitFault struct {
	ab.Device
	seen  *atomic.Bool
	after bool
	cut   func()
}

func (c commitFault) Commit(ctx context.Context, slot, previous disk.Slot) error {
	if !c.seen.CompareAndSwap(false, true) {
		return c.Device.Commit(ctx, slot, previous)
	}
	if c.cut != nil {
		c.cut()
		return c.Device.Commit(ctx, slot, previous)
	}
	if c.after {
		if err := c.Device.Commit(ctx, slot, previous); err != nil {
			return err
		}
	}
	c.Device.Close()
	return fmt.Errorf("commit: %w", ab.ErrConnLost)
}

func TestUpdateConfirmsCommitAfterLostConnection(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(map[bool]string{false: "request lost", true: "answer lost"}[after], func(t *testing.T) {
			f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "abababababababab0101", Seed: 11})
			dev := devs[0]
			v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "cdcdcdcdcdcdcdcd0202", Seed: 12})
			var seen atomic.Bool
			lossy := func(d ab.Device) ab.Device { return commitFault{d, &seen, after, nil} }
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			opts := fastOpts()
			var logged []string
			opts.Log = func(format string, a ...any) { logged = append(logged, fmt.Sprintf(format, a...)) }
			res, err := updatePath(ctx, dialer(f, dev), dev.Name, v2, opts, lossy)
			if !seen.Load() || !strings.Contains(strings.Join(logged, "\n"), "reconnecting") {
				t.Fatalf("the commit was never intercepted; log:\n%s", strings.Join(logged, "\n"))
			}
			if err != nil || !res.Committed {
				t.Fatalf("update after a lost commit %s: %v, %+v", map[bool]string{false: "request", true: "answer"}[after], err, res)
			}
			if dev.Root() != 5 || dev.Boots() != 2 {
				t.Fatalf("device runs root %d after %d boots, want root 5 after 2 (first boot and the trial)", dev.Root(), dev.Boots())
			}
			if err := dev.PowerCycle(); err != nil || dev.Root() != 5 {
				t.Fatalf("after a power cycle: %v, root %d: the commit did not land", err, dev.Root())
			}
		})
	}
}

func TestUpdateReportsUnconfirmedCommit(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "efefefefefefefef0303", Seed: 13})
	dev := devs[0]
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "0404040404040404fefe", Seed: 14})
	// Power goes out as the commit is written and stays out.
	var seen atomic.Bool
	cutting := func(d ab.Device) ab.Device { return commitFault{d, &seen, false, func() { dev.PowerCut() }} }
	opts := fastOpts()
	opts.BootTimeout = 3 * time.Second
	_, err := updatePath(context.Background(), dialer(f, dev), dev.Name, v2, opts, cutting)
	if !errors.Is(err, ErrCommitUnknown) {
		t.Fatalf("err = %v, want the commit reported as unconfirmed", err)
	}
	// Whatever landed, the device boots a whole system.
	if err := dev.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	bootDrv, rootDrv, _ := dev.SlotDerivations(dev.BootPartition(), dev.Root())
	if bootDrv != rootDrv {
		t.Fatalf("mixed system: boot %s, root %s", bootDrv, rootDrv)
	}
}

// updatePath is Update with faults: wrap wraps every connection.
func updatePath(ctx context.Context, dial ssh.Dialer, name, path string, opts UpdateOptions, wrap func(ab.Device) ab.Device) (*UpdateResult, error) {
	f, img, err := openImage(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return updateImage(ctx, dial, name, img, opts, wrap)
}

// Two updates of one device at once: the second finds the device's update
// lock and is refused before it writes; the first completes.
func TestConcurrentUpdatesAreRefused(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "c3c3c3c3c3c3c3c3a3a3", Seed: 23, RootSize: 16 << 20, Payload: 12 << 20})
	dev := devs[0]
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "d4d4d4d4d4d4d4d4b4b4", Seed: 24, RootSize: 16 << 20, Payload: 12 << 20})
	v3, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "e5e5e5e5e5e5e5e5c5c5", Seed: 25, RootSize: 16 << 20, Payload: 12 << 20})
	if err := dev.LimitRate("40mbit"); err != nil { // the first write takes a few seconds
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := fastOpts()
	opts.NoDelta = true
	first := make(chan error, 1)
	go func() {
		_, err := Update(ctx, dialer(f, dev), dev.Name, v2, opts)
		first <- err
	}()
	// The second starts while the first writes.
	time.Sleep(1500 * time.Millisecond)
	_, err := Update(ctx, dialer(f, dev), dev.Name, v3, opts)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "kiln on") {
		t.Fatalf("second update: %v, want ErrBusy naming the holder", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first update: %v", err)
	}
	bootDrv, rootDrv, _ := dev.SlotDerivations(dev.BootPartition(), dev.Root())
	if dev.Root() != 5 || bootDrv != "d4d4d4d4d4d4d4d4b4b4" || rootDrv != bootDrv {
		t.Fatalf("device runs root %d with %s/%s, want the first update's image", dev.Root(), bootDrv, rootDrv)
	}
	// The lock went with the update: a third one goes through.
	if _, err := Update(ctx, dialer(f, dev), dev.Name, v3, fastOpts()); err != nil {
		t.Fatalf("update after the first finished: %v", err)
	}
}

// An update that finds the device in a young trial boot without a lock
// leaves it alone (its updater may be reconnecting after the trial reboot);
// an older one is an abandoned trial: back to the committed slot, then on.
func TestUpdateLeavesYoungTrialAlone(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "f6f6f6f6f6f6f6f6d6d6", Seed: 26, BothSlots: true})
	dev := devs[0]
	v3, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "b8b8b8b8b8b8b8b8f8f8", Seed: 28})
	// What an updater killed right after its trial reboot leaves: slot b
	// armed for one boot and running, nothing committed, no lock.
	ctx := context.Background()
	c, rem, err := connect(ctx, dialer(f, dev), "/dev/mmcblk0")
	if err != nil {
		t.Fatal(err)
	}
	if err := rem.setAutoboot(ctx, rem.committed.Boot, 3); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	c.Run(rctx, "reboot '0 tryboot'", nil, nil)
	rcancel()
	c.Close()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if !sshtest.Wait(wctx, func() bool { return dev.Boots() == 2 && dev.Root() == 5 }) {
		t.Fatal("the device did not trial-boot slot b")
	}

	opts := fastOpts()
	opts.TrialGrace = time.Hour
	_, err = Update(ctx, dialer(f, dev), dev.Name, v3, opts)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "trial boot") || dev.Boots() != 2 {
		t.Fatalf("young trial: %v after %d boots, want ErrBusy and no reboot", err, dev.Boots())
	}
	opts.TrialGrace = time.Millisecond
	res, err := Update(context.Background(), dialer(f, dev), dev.Name, v3, opts)
	if err != nil || !res.Committed {
		t.Fatalf("abandoned trial: %v %+v", err, res)
	}
	if bootDrv, rootDrv, _ := dev.SlotDerivations(dev.BootPartition(), dev.Root()); bootDrv != "b8b8b8b8b8b8b8b8f8f8" || rootDrv != bootDrv {
		t.Fatalf("device runs %s/%s, want the third image", bootDrv, rootDrv)
	}
}

// Stopping kiln during the health check (its context cancelled, as on
// SIGINT) still rolls the device back: it is never left on a slot that did
// not pass its check.
func TestInterruptedHealthCheckRollsBack(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "c9c9c9c9c9c9c9c9a9a9", Seed: 29})
	dev := devs[0]
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "dadadadadadadadab0b0", Seed: 30})
	dev.SetHealth("sleep 600")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := fastOpts()
	opts.HealthTimeout = time.Minute
	done := make(chan error, 1)
	go func() { _, err := Update(ctx, dialer(f, dev), dev.Name, v2, opts); done <- err }()
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if !sshtest.Wait(wctx, func() bool { return dev.Boots() == 2 && dev.Root() == 5 }) {
		t.Fatal("the update never reached its trial boot")
	}
	time.Sleep(time.Second) // into the health check
	cancel()
	err := <-done
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err = %v, want a rollback after the interruption", err)
	}
	if dev.Root() != 4 || dev.Boots() != 3 {
		t.Fatalf("device runs root %d after %d boots, want the committed 4 after the rollback reboot", dev.Root(), dev.Boots())
	}
}

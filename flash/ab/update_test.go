package ab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/ab/abtest"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/image/disk"
)

// fixture is a real A/B image (made by sshtest with sfdisk, mkfs.vfat,
// mtools and mksquashfs) and what a device running its slot a holds.
type fixture struct {
	img     *ab.Image
	tbl     *disk.Table
	oldRoot []byte // slot a's root on the device before the update
	oldBoot []byte
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  error
)

func getFixture(t *testing.T) *fixture {
	t.Helper()
	for _, tool := range []string{"sfdisk", "mkfs.vfat", "mcopy", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs it)", tool)
		}
	}
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-ab-test-")
		if err != nil {
			fixErr = err
			return
		}
		defer os.RemoveAll(dir)
		path, err := sshtest.BuildImage(dir, sshtest.ImageSpec{Derivation: "ab12ab12ab12ab12ab12", Seed: 7})
		if err != nil {
			fixErr = err
			return
		}
		data, err := os.ReadFile(path)
		if err != nil {
			fixErr = err
			return
		}
		img, err := ab.ReadImage("card.img", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			fixErr = err
			return
		}
		tbl, err := disk.ReadTable(disk.FromBytes(data))
		if err != nil {
			fixErr = err
			return
		}
		r := rand.New(rand.NewSource(1))
		f := &fixture{img: img, tbl: tbl, oldRoot: make([]byte, img.Root.Size), oldBoot: make([]byte, img.Boot.Size)}
		r.Read(f.oldRoot)
		r.Read(f.oldBoot)
		fix = f
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return fix
}

// The boot controls the update tests run with: the Raspberry Pi
// firmware's tryboot, and U-Boot's boot counter with one trial boot (the
// same promise as tryboot's: a trial that is not committed is left at the
// next boot).
var mechanisms = []string{"tryboot", "uboot-env"}

// eachMechanism runs test once per boot control.
func eachMechanism(t *testing.T, test func(t *testing.T, mech string)) {
	for _, m := range mechanisms {
		t.Run(m, func(t *testing.T) { test(t, m) })
	}
}

// device returns a device running and committed to slot a, which holds the
// old system, its slot chosen by mech.
func (f *fixture) device(t *testing.T, mech string) *abtest.Device {
	t.Helper()
	var d *abtest.Device
	var err error
	if mech == "uboot-env" {
		d, err = abtest.NewUBoot(f.tbl, f.img.Layout, "a", 1)
	} else {
		d, err = abtest.New(f.tbl, f.img.Layout, "a")
	}
	if err != nil {
		t.Fatal(err)
	}
	d.SetPartition(2, f.oldBoot)
	d.SetPartition(4, f.oldRoot)
	return d
}

func opts(t *testing.T) ab.Options {
	return ab.Options{BootTimeout: 5 * time.Second, Poll: time.Millisecond, TrialGrace: time.Nanosecond, Owner: "test", Log: t.Logf}
}

// newSlot is what slot b must hold after a committed update.
func (f *fixture) newSlot(t *testing.T, d *abtest.Device) (boot, root []byte) {
	t.Helper()
	rootB, _ := f.tbl.Partition(5)
	boot, err := f.img.SlotBoot(rootB.PartUUID)
	if err != nil {
		t.Fatal(err)
	}
	root = make([]byte, f.img.Root.Size)
	f.img.RootReader().ReadAt(root, 0)
	return boot, root
}

// settle powers the device through whatever the update left pending and
// checks the A/B invariant: it runs its committed slot, and that slot holds
// either the old system whole (slot a) or the new one whole (slot b).
func (f *fixture) settle(t *testing.T, d *abtest.Device) (committed string) {
	t.Helper()
	var st *ab.State
	var err error
	for i := 0; i < 10 && st == nil; i++ {
		var c ab.Device
		if c, err = d.Dial(context.Background()); err == nil {
			st, err = c.Inspect(context.Background())
			c.Close()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	running, comm := d.Running()
	if running != comm && st.Trial() {
		// A device left in a trial returns to its committed slot at its next
		// (power) restart: the tryboot flag does not survive one.
		t.Logf("left in a trial of slot %s", running.Name)
	}
	boot, root := f.newSlot(t, d)
	switch comm.Name {
	case "a":
		if !d.Same(2, f.oldBoot) || !d.Same(4, f.oldRoot) {
			t.Errorf("committed slot a no longer holds the old system")
		}
	case "b":
		if !d.Same(3, boot) || !d.Same(5, root) {
			t.Errorf("committed slot b does not hold the new system whole: MIXED")
		}
	default:
		t.Fatalf("committed slot %+v", comm)
	}
	return comm.Name
}

func TestUpdateCommitsAfterTrialAndHealth(t *testing.T) {
	eachMechanism(t, testUpdateCommitsAfterTrialAndHealth)
}

func testUpdateCommitsAfterTrialAndHealth(t *testing.T, mech string) {
	f := getFixture(t)
	d := f.device(t, mech)
	var checked []string
	d.HealthCheck = func(_ context.Context, s disk.Slot, cmd string) error {
		checked = append(checked, s.Name+":"+cmd)
		return nil
	}
	o := opts(t)
	o.Health = "systemctl is-system-running"
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Committed || res.RolledBack || res.From != "a" || res.To != "b" || res.Derivation != "ab12ab12ab12ab12ab12" {
		t.Errorf("result %+v", res)
	}
	if running, committed := d.Running(); running.Name != "b" || committed.Name != "b" {
		t.Errorf("device runs %s, commits %s", running.Name, committed.Name)
	}
	if strings.Join(checked, ",") != "b:systemctl is-system-running" {
		t.Errorf("health checks: %v", checked)
	}
	if f.settle(t, d) != "b" {
		t.Error("not committed")
	}
	// Updating again goes the other way, from b to a.
	res, err = ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if err != nil || res.From != "b" || res.To != "a" {
		t.Fatalf("second update: %v %+v", err, res)
	}
}

func TestUpdateRollsBack(t *testing.T) { eachMechanism(t, testUpdateRollsBack) }

func testUpdateRollsBack(t *testing.T, mech string) {
	f := getFixture(t)
	for name, setup := range map[string]func(d *abtest.Device, o *ab.Options){
		"health check fails": func(d *abtest.Device, _ *ab.Options) {
			d.HealthCheck = func(context.Context, disk.Slot, string) error { return errors.New("exit 1: app not ready") }
		},
		"health check hangs": func(d *abtest.Device, o *ab.Options) {
			o.HealthTimeout = 20 * time.Millisecond
			d.HealthCheck = func(ctx context.Context, _ disk.Slot, _ string) error { <-ctx.Done(); return ctx.Err() }
		},
		"trial kernel never comes up": func(d *abtest.Device, _ *ab.Options) { d.BadTrial = true },
	} {
		t.Run(name, func(t *testing.T) {
			d := f.device(t, mech)
			o := opts(t)
			setup(d, &o)
			res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, o)
			if !errors.Is(err, ab.ErrRolledBack) || !res.RolledBack || res.Committed {
				t.Fatalf("err %v, result %+v", err, res)
			}
			if running, committed := d.Running(); running.Name != "a" || committed.Name != "a" {
				t.Errorf("device runs %s, commits %s", running.Name, committed.Name)
			}
			f.settle(t, d)
		})
	}
}

// Stopping kiln during the health check still rolls the device back.
func TestUpdateInterruptedDuringHealthRollsBack(t *testing.T) {
	eachMechanism(t, testUpdateInterruptedDuringHealthRollsBack)
}

func testUpdateInterruptedDuringHealthRollsBack(t *testing.T, mech string) {
	f := getFixture(t)
	d := f.device(t, mech)
	ctx, cancel := context.WithCancel(context.Background())
	d.HealthCheck = func(hctx context.Context, _ disk.Slot, _ string) error {
		cancel()
		<-hctx.Done()
		return hctx.Err()
	}
	_, err := ab.Update(ctx, d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, ab.ErrRolledBack) {
		t.Fatalf("err %v", err)
	}
	if running, _ := d.Running(); running.Name != "a" {
		t.Errorf("device left on slot %s", running.Name)
	}
}

func TestUpdateRefusesBusyDevice(t *testing.T) { eachMechanism(t, testUpdateRefusesBusyDevice) }

func testUpdateRefusesBusyDevice(t *testing.T, mech string) {
	f := getFixture(t)
	d := f.device(t, mech)
	c, _ := d.Dial(context.Background())
	if err := c.Lock(context.Background(), "kiln on another host"); err != nil {
		t.Fatal(err)
	}
	_, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, ab.ErrBusy) {
		t.Fatalf("err %v", err)
	}
	for _, l := range d.Log() {
		if strings.HasPrefix(l, "write") {
			t.Errorf("wrote while another update held the lock: %v", d.Log())
		}
	}
	// A young trial boot (its updater may be reconnecting) is left alone;
	// an old one is rebooted back to the committed slot first.
	d = f.device(t, mech)
	d.DownDials = 0
	c, _ = d.Dial(context.Background())
	b := f.img.Layout.Slots[1]
	c.ArmTrial(context.Background(), f.img.Layout.Slots[0], b)
	c.Reboot(context.Background(), true)
	o := opts(t)
	o.TrialGrace = time.Hour
	if _, err := ab.Update(context.Background(), d.Dial, "dev", f.img, o); !errors.Is(err, ab.ErrBusy) {
		t.Fatalf("young trial: %v", err)
	}
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if err != nil || !res.Committed || res.To != "b" {
		t.Fatalf("old trial: %v %+v", err, res)
	}
}

func TestUpdateRefusesCorruptWrite(t *testing.T) { eachMechanism(t, testUpdateRefusesCorruptWrite) }

func testUpdateRefusesCorruptWrite(t *testing.T, mech string) {
	f := getFixture(t)
	d := f.device(t, mech)
	d.Fail(abtest.Fault{Step: abtest.Write, N: 1, Kind: abtest.Corrupt})
	_, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, flash.ErrVerify) {
		t.Fatalf("err %v", err)
	}
	for _, l := range d.Log() {
		if strings.HasPrefix(l, "arm") {
			t.Errorf("armed a slot that failed its proof: %v", d.Log())
		}
	}
	if f.settle(t, d) != "a" {
		t.Error("committed a slot that failed its proof")
	}
}

// A commit whose answer is lost, then a power cut while kiln reconnects to
// find out: the commit had landed, so the device boots the new slot and
// the update reports it committed.
func TestUpdateLostCommitAnswerThenPowerCut(t *testing.T) {
	eachMechanism(t, testUpdateLostCommitAnswerThenPowerCut)
}

func testUpdateLostCommitAnswerThenPowerCut(t *testing.T, mech string) {
	f := getFixture(t)
	d := f.device(t, mech)
	d.Fail(abtest.Fault{Step: abtest.Commit, N: 1, Kind: abtest.LoseAnswer}, abtest.Fault{Step: abtest.Inspect, N: 3, Kind: abtest.Cut})
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if err != nil || !res.Committed {
		t.Fatalf("%v %+v; %v", err, res, d.Log())
	}
	if d.PowerCuts() != 1 || f.settle(t, d) != "b" {
		t.Errorf("power cuts %d, log %v", d.PowerCuts(), d.Log())
	}
}

// Every step of an update, cut by a power loss or with its answer lost:
// the device always ends on a whole system, the result says which, and a
// lost commit answer is settled by reconnecting.
func TestUpdatePowerCutsAndLostAnswersAtEveryStep(t *testing.T) {
	eachMechanism(t, testUpdatePowerCutsAndLostAnswersAtEveryStep)
}

func testUpdatePowerCutsAndLostAnswersAtEveryStep(t *testing.T, mech string) {
	f := getFixture(t)
	for _, step := range abtest.Steps {
		ns := []int{1}
		switch step {
		case abtest.Inspect:
			ns = []int{1, 2} // the first connection, after the trial reboot
		case abtest.Write:
			ns = []int{1, 2} // root, boot
		case abtest.Lock:
			ns = []int{1, 2}
		}
		for _, n := range ns {
			for _, kind := range []abtest.FaultKind{abtest.Cut, abtest.LoseAnswer} {
				t.Run(fmt.Sprintf("%s#%d/%v", step, n, kind), func(t *testing.T) {
					d := f.device(t, mech)
					d.Fail(abtest.Fault{Step: step, N: n, Kind: kind})
					res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
					committed := f.settle(t, d)
					switch {
					case err == nil:
						if !res.Committed || committed != "b" {
							t.Errorf("success reported, but committed slot %s (%+v)", committed, res)
						}
					case errors.Is(err, ab.ErrRolledBack):
						if committed != "a" || !res.RolledBack {
							t.Errorf("rollback reported (%v), but committed slot %s", err, committed)
						}
					default:
						if committed != "a" || res.Committed {
							t.Errorf("failure reported (%v), but committed slot %s", err, committed)
						}
					}
					// What each fault must end in.
					switch {
					case step == abtest.Commit && kind == abtest.LoseAnswer:
						if err != nil || !res.Committed {
							t.Errorf("lost commit answer: %v", err)
						}
					case step == abtest.Commit && kind == abtest.Cut:
						if !errors.Is(err, ab.ErrRolledBack) {
							t.Errorf("power cut before the commit landed: %v, want ErrRolledBack", err)
						}
					case step == abtest.Health && kind == abtest.Cut:
						if !errors.Is(err, ab.ErrRolledBack) && err != nil {
							t.Logf("power cut in the health check: %v", err)
						}
					}
					t.Logf("%v → %v; device log %v", kind, err, d.Log())
				})
			}
		}
	}
}

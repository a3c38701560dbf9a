package ab_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/ab/abtest"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/image/uboot"
	"kiln.dev/kiln/image/uboot/uboottest"
)

func (f *fixture) ubootDevice(t *testing.T, bootlimit int) *abtest.Device {
	t.Helper()
	d, err := abtest.NewUBoot(f.tbl, f.img.Layout, "a", bootlimit)
	if err != nil {
		t.Fatal(err)
	}
	d.SetPartition(2, f.oldBoot)
	d.SetPartition(4, f.oldRoot)
	return d
}

func envVars(t *testing.T, d *abtest.Device) map[string]string {
	t.Helper()
	vars, err := uboot.DecodeEnv(d.Env())
	if err != nil {
		t.Fatal(err)
	}
	return vars
}

func wantEnv(t *testing.T, d *abtest.Device, want map[string]string) {
	t.Helper()
	vars := envVars(t, d)
	for k, v := range want {
		if vars[k] != v {
			t.Errorf("uboot.env %s=%q, want %q (boots %v)", k, vars[k], v, d.Boots())
		}
	}
}

// A trial kernel that never comes up is booted bootlimit times by U-Boot,
// then U-Boot itself returns to the old slot; kiln reports the rollback.
func TestUBootTrialCountedThenFallback(t *testing.T) {
	f := getFixture(t)
	d := f.ubootDevice(t, 3)
	d.BadTrial = true
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, ab.ErrRolledBack) || !res.RolledBack {
		t.Fatalf("err %v, result %+v", err, res)
	}
	boots := strings.Join(d.Boots(), "\n")
	for _, want := range []string{"slot b bootcount=1", "slot b bootcount=2", "slot b bootcount=3", "slot a bootcount=0 (slot b not marked good in 3 boots: fallback)"} {
		if !strings.Contains(boots, want) {
			t.Errorf("boots lack %q:\n%s", want, boots)
		}
	}
	wantEnv(t, d, map[string]string{uboot.VarSlot: "a", uboot.VarTrial: "0", uboot.VarBootCount: "0"})
	if f.settle(t, d) != "a" {
		t.Error("not back on slot a")
	}
}

// A power cut during the health check of a trial that U-Boot may boot 3
// times: the device comes up on the trial again, and kiln's rollback
// cancels the trial in uboot.env before rebooting.
func TestUBootPowerCutInTrialRollsBack(t *testing.T) {
	f := getFixture(t)
	d := f.ubootDevice(t, 3)
	d.Fail(abtest.Fault{Step: abtest.Health, N: 1, Kind: abtest.Cut})
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, ab.ErrRolledBack) || !res.RolledBack {
		t.Fatalf("err %v, result %+v; log %v", err, res, d.Log())
	}
	if !strings.Contains(strings.Join(d.Boots(), "\n"), "slot b bootcount=2") {
		t.Errorf("the trial was not booted again after the power cut: %v", d.Boots())
	}
	if running, _ := d.Running(); running.Name != "a" {
		t.Errorf("runs %s; boots %v", running.Name, d.Boots())
	}
	wantEnv(t, d, map[string]string{uboot.VarSlot: "a", uboot.VarTrial: "0", uboot.VarBootCount: "0", uboot.VarFallback: "a"})
	f.settle(t, d)
}

// A system that marks its trial good itself: kiln's commit confirms it;
// when kiln's health check fails, the rollback undoes the system's mark.
func TestUBootSystemMarksItselfGood(t *testing.T) {
	f := getFixture(t)
	d := f.ubootDevice(t, 2)
	d.MarksGood = true
	res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if err != nil || !res.Committed {
		t.Fatalf("%v %+v", err, res)
	}
	wantEnv(t, d, map[string]string{uboot.VarSlot: "b", uboot.VarFallback: "b", uboot.VarTrial: "0"})

	d = f.ubootDevice(t, 2)
	d.MarksGood = true
	d.HealthCheck = func(context.Context, disk.Slot, string) error { return errors.New("exit 1") }
	res, err = ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, ab.ErrRolledBack) {
		t.Fatalf("%v %+v", err, res)
	}
	wantEnv(t, d, map[string]string{uboot.VarSlot: "a", uboot.VarFallback: "a", uboot.VarTrial: "0"})
	if f.settle(t, d) != "a" {
		t.Error("a trial that failed kiln's health check stayed committed")
	}
}

// A card that tears the sector being written when the power goes leaves
// uboot.env with a bad CRC. That is the weakness of a single-copy
// environment (Debian's u-boot-rpi has no redundant one): U-Boot ignores
// the file and boot.scr boots the first slot. kiln then refuses to update,
// saying why, and writes nothing.
func TestUBootTornEnvWrite(t *testing.T) {
	f := getFixture(t)
	d := f.ubootDevice(t, 1)
	d.Fail(abtest.Fault{Step: abtest.Arm, N: 1, Kind: abtest.Torn})
	if _, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t)); !errors.Is(err, ab.ErrConnLost) {
		t.Fatalf("torn arm: %v", err)
	}
	if _, err := uboot.DecodeEnv(d.Env()); !errors.Is(err, uboot.ErrBadCRC) {
		t.Fatalf("the torn sector left a valid env: %v", err)
	}
	if running, _ := d.Running(); running.Name != "a" {
		t.Errorf("runs %s", running.Name)
	}
	writes := len(d.Log())
	var err error
	for i := 0; i < 5; i++ { // while the device boots, dials fail
		if _, err = ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t)); !errors.Is(err, ab.ErrConnLost) {
			break
		}
	}
	if !errors.Is(err, uboot.ErrBadCRC) {
		t.Fatalf("update over a bad env: %v", err)
	}
	for _, l := range d.Log()[writes:] {
		if !strings.HasPrefix(l, "inspect") {
			t.Errorf("acted on a device whose env it cannot read: %v", l)
		}
	}
	// A card that writes whole sectors: the cut rewrite did not happen.
	d = f.ubootDevice(t, 1)
	d.Fail(abtest.Fault{Step: abtest.Arm, N: 1, Kind: abtest.Cut})
	ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	wantEnv(t, d, map[string]string{uboot.VarSlot: "a", uboot.VarTrial: "0"})
	d.DownDials = 0
	f.settle(t, d)
	if res, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t)); err != nil || !res.Committed {
		t.Fatalf("update after a cut arm: %v", err)
	}
}

// A card that stores a byte of the env wrong: the read-back catches it.
func TestUBootCorruptEnvWrite(t *testing.T) {
	f := getFixture(t)
	d := f.ubootDevice(t, 1)
	d.Fail(abtest.Fault{Step: abtest.Arm, N: 1, Kind: abtest.Corrupt})
	_, err := ab.Update(context.Background(), d.Dial, "dev", f.img, opts(t))
	if !errors.Is(err, flash.ErrVerify) {
		t.Fatalf("err %v", err)
	}
	for _, l := range d.Log() {
		if strings.HasPrefix(l, "reboot") {
			t.Errorf("rebooted into an env that failed its read-back: %v", d.Log())
		}
	}
}

// What kiln writes into uboot.env, the real fw_printenv reads with the same
// values: after arming a trial and after the commit.
func TestUBootEnvReadByFwPrintenv(t *testing.T) {
	if _, err := exec.LookPath("fw_printenv"); err != nil {
		t.Skip("fw_printenv not installed (make deps installs libubootenv-tool)")
	}
	f := getFixture(t)
	d := f.ubootDevice(t, 1)
	ctx := context.Background()
	check := func(what string, want map[string]string) {
		t.Helper()
		got := uboottest.Printenv(t, d.Env())
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: fw_printenv %s=%q, want %q", what, k, got[k], v)
			}
		}
		if mine := envVars(t, d); len(mine) != len(got) {
			t.Errorf("%s: fw_printenv lists %d variables, kiln's decoder %d", what, len(got), len(mine))
		}
	}
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Inspect(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := f.img.Layout.Slots[0], f.img.Layout.Slots[1]
	if err := c.ArmTrial(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	check("armed", map[string]string{"boot_slot": "b", "boot_fallback": "a", "upgrade_available": "1", "bootcount": "0", "bootlimit": "1"})
	res, err := ab.Update(ctx, d.Dial, "dev", f.img, opts(t))
	if err != nil || !res.Committed {
		t.Fatalf("%v %+v", err, res)
	}
	check("committed", map[string]string{"boot_slot": "b", "boot_fallback": "b", "upgrade_available": "0", "bootcount": "0"})
}

// Stage writes, proves and arms, and leaves the device running its old
// slot: U-Boot tries the new slot at the next boot, however it comes (a
// power cycle here), and falls back by itself past the limit; the
// firmware's tryboot needs its reboot request and so stays on the old slot.
func TestStage(t *testing.T) {
	f := getFixture(t)
	for _, mech := range mechanisms {
		t.Run(mech, func(t *testing.T) {
			d := f.device(t, mech)
			d.DownDials = 0
			res, err := ab.Stage(context.Background(), d.Dial, "dev", f.img, opts(t))
			if err != nil || res.Committed || res.To != "b" || res.RootSHA256 == "" {
				t.Fatalf("%v %+v", err, res)
			}
			if running, _ := d.Running(); running.Name != "a" {
				t.Fatalf("staging rebooted the device into %s", running.Name)
			}
			boot, root := f.newSlot(t, d)
			if !d.Same(3, boot) || !d.Same(5, root) {
				t.Fatal("slot b does not hold the staged system")
			}
			d.PowerCycle()
			want := map[string]string{"uboot-env": "b", "tryboot": "a"}[mech]
			if running, _ := d.Running(); running.Name != want {
				t.Fatalf("after a power cycle: runs %s, want %s", running.Name, want)
			}
			d.PowerCycle()
			if running, committed := d.Running(); running.Name != "a" || committed.Name != "a" {
				t.Fatalf("second power cycle: runs %s, commits %s", running.Name, committed.Name)
			}
		})
	}
}

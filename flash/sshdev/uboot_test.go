package sshdev

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/image/uboot/uboottest"
)

// cardEnv reads uboot.env off the device's card (mtools) and has the real
// fw_printenv print it.
func cardEnv(t *testing.T, dev *sshtest.Device) map[string]string {
	t.Helper()
	env := filepath.Join(t.TempDir(), "uboot.env")
	if out, err := exec.Command("mcopy", "-n", "-i", dev.PartDev(1), "::uboot.env", env).CombinedOutput(); err != nil {
		t.Fatalf("mcopy: %v\n%s", err, out)
	}
	b, err := os.ReadFile(env)
	if err != nil {
		t.Fatal(err)
	}
	return uboottest.Printenv(t, b)
}

func wantCardEnv(t *testing.T, dev *sshtest.Device, want map[string]string) {
	t.Helper()
	got := cardEnv(t, dev)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("uboot.env on the card: %s=%q, want %q (U-Boot log %v)", k, got[k], v, dev.UBootLog())
		}
	}
}

// kiln update on a board whose A/B is U-Boot's (uboot-env): the slot is
// written and proven over SSH, the trial armed by rewriting uboot.env on
// the card (read back past the cache), the reboot is a plain one and
// U-Boot's boot counter picks the trial; the commit leaves the new slot
// committed, a failed health check leaves the old one — in an env that
// fw_printenv reads.
func TestUpdateUBootEnv(t *testing.T) {
	if _, err := exec.LookPath("fw_printenv"); err != nil {
		t.Skip("fw_printenv not installed (make deps installs libubootenv-tool)")
	}
	spec := func(drv string, seed int64) sshtest.ImageSpec {
		return sshtest.ImageSpec{Derivation: drv, Seed: seed, AB: "uboot-env", BootLimit: 2}
	}
	f, devs, _ := fleet(t, 1, spec("7777777777777777uuuu", 7))
	dev := devs[0]
	wantCardEnv(t, dev, map[string]string{"boot_slot": "a", "upgrade_available": "0", "bootlimit": "2"})
	v2, err := sshtest.BuildImage(f.Dir, spec("8888888888888888vvvv", 8))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// An image whose A/B is tryboot, for this U-Boot card: refused before
	// anything is written.
	tb, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "8888888888888888tttt", Seed: 8})
	if err != nil {
		t.Fatal(err)
	}
	before := partHash(t, dev.PartDev(5), 8<<20)
	if _, err := Update(ctx, dialer(f, dev), dev.Name, tb, fastOpts()); !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), `the device's A/B is "uboot-env"`) {
		t.Fatalf("tryboot image on a U-Boot card: %v", err)
	}
	if partHash(t, dev.PartDev(5), 8<<20) != before {
		t.Fatal("the refused image was written")
	}

	res, err := Update(ctx, dialer(f, dev), dev.Name, v2, fastOpts())
	if err != nil || !res.Committed || res.From != "a" || res.To != "b" {
		t.Fatalf("update: %v %+v; U-Boot log %v", err, res, dev.UBootLog())
	}
	if dev.Root() != 5 || dev.BootPartition() != 3 {
		t.Fatalf("device runs root %d from boot %d, want 5 from 3", dev.Root(), dev.BootPartition())
	}
	checkSlotB(t, dev, v2, res)
	if log := strings.Join(dev.UBootLog(), "\n"); !strings.Contains(log, "slot b bootcount=1") {
		t.Errorf("U-Boot did not boot b on trial:\n%s", log)
	}
	wantCardEnv(t, dev, map[string]string{"boot_slot": "b", "boot_fallback": "b", "upgrade_available": "0", "bootcount": "0"})
	if err := dev.PowerCycle(); err != nil || dev.Root() != 5 {
		t.Fatalf("power cycle: %v, root %d", err, dev.Root())
	}

	// A failing health check: the trial (which U-Boot would boot twice) is
	// cancelled in uboot.env and the device reboots to b.
	dev.SetHealth("exit 1")
	v3, err := sshtest.BuildImage(f.Dir, spec("9999999999999999wwww", 9))
	if err != nil {
		t.Fatal(err)
	}
	res, err = Update(ctx, dialer(f, dev), dev.Name, v3, fastOpts())
	if !errors.Is(err, ErrRolledBack) || res.Committed || dev.Root() != 5 {
		t.Fatalf("failing health: %v %+v, device on root %d; U-Boot log %v", err, res, dev.Root(), dev.UBootLog())
	}
	wantCardEnv(t, dev, map[string]string{"boot_slot": "b", "boot_fallback": "b", "upgrade_available": "0", "bootcount": "0"})
	if err := dev.PowerCycle(); err != nil || dev.Root() != 5 {
		t.Fatalf("power cycle after the rollback: %v, root %d", err, dev.Root())
	}
	t.Logf("U-Boot log: %v", dev.UBootLog())
}

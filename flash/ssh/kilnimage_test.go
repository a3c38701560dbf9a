package ssh

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/firmware/store"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/image/recipebuild"
)

// buildAB builds testdata/ab-appliance (optionally with another motd, so a
// new derivation) with kiln's image builder and returns image.img.
func buildAB(t *testing.T, motd string) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ab-appliance")
	if out, err := exec.Command("cp", "-r", "../../testdata/ab-appliance", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if motd != "" {
		os.WriteFile(filepath.Join(dir, "rootfs/etc/motd"), []byte(motd), 0o644)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	res, err := recipebuild.Build(context.Background(), dir, out, recipebuild.Options{Store: st, NoXZ: true})
	if err != nil {
		t.Fatalf("build %s: %v", dir, err)
	}
	drv, err := ImageDerivation(filepath.Join(out, "image.img"))
	if err != nil {
		t.Fatal(err)
	}
	_ = res
	return filepath.Join(out, "image.img"), drv
}

// TestUpdateKilnBuiltImage runs an A/B update between two images built by
// kiln's own image builder (MBR with logical partitions for the roots).
func TestUpdateKilnBuiltImage(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Skipf("test devices need root and the real tools: %v", err)
	}
	v1, drv1 := buildAB(t, "")
	v2, drv2 := buildAB(t, "version 2\n")
	if drv1 == drv2 {
		t.Fatal("a changed file did not change the derivation")
	}
	f, err := sshtest.NewFleet()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := f.AddDevice(v1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := Inspect(ctx, dialer(f, dev), dev.Name, "")
	if err != nil || st.Derivation != drv1 || st.Running != "a" {
		t.Fatalf("inspect before: %+v %v", st, err)
	}
	res, err := Update(ctx, dialer(f, dev), dev.Name, v2, fastOpts())
	if err != nil || !res.Committed || res.To != "b" {
		t.Fatalf("update: %v %+v", err, res)
	}
	st, err = Inspect(ctx, dialer(f, dev), dev.Name, "")
	if err != nil || st.Derivation != drv2 || st.Running != "b" || st.Trial {
		t.Fatalf("inspect after: %+v %v", st, err)
	}
	// Independently: the root slot the device now runs holds v2's derivation file.
	got, err := exec.Command("unsquashfs", "-cat", dev.PartDev(dev.Root()), "etc/kiln/derivation").Output()
	if err != nil || !strings.Contains(string(got), drv2) {
		t.Fatalf("running root holds %q (%v), want %s", got, err, drv2)
	}
	running := dev.Root()
	if err := dev.PowerCycle(); err != nil || dev.Root() != running {
		t.Fatalf("after a power cycle the device runs root %d (%v), want the committed %d", dev.Root(), err, running)
	}
}

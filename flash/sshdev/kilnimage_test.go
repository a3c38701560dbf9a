package sshdev

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh/sshtest"
)

// TestUpdateKilnBuiltImage runs an A/B update between two images built by
// kiln's own image builder (MBR with logical partitions for the roots).
func TestUpdateKilnBuiltImage(t *testing.T) {
	f := sshtest.Start(t)
	v1, drv1, err := sshtest.KilnImage(f.Dir, "")
	if err != nil {
		t.Fatal(err)
	}
	v2, drv2, err := sshtest.KilnImage(f.Dir, "version 2\n")
	if err != nil {
		t.Fatal(err)
	}
	if drv1 == drv2 {
		t.Fatal("a changed file did not change the derivation")
	}
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

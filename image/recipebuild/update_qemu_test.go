package recipebuild_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/flash/sshdev"
)

// TestUpdatedCardBootsInQEMU: the whole field-update path on a real Pi
// kernel. A test device (a real OpenSSH server; its SD card a loop device)
// runs the kiln-built rpi4-appliance image (tryboot A/B, what kiln update
// drives); kiln updates it over SSH, with the device's stock tools only, to a
// build of the same recipe with another motd; then the device's card is
// booted from the boot partition its autoboot.txt now commits, and the
// initramfs must mount the new root slot and print the new derivation.
// QEMU 7.2 has no Pi 4 machine: the slot's kernel, initramfs and command
// line are booted on raspi3b with the kernel package's Pi 3B device tree.
func TestUpdatedCardBootsInQEMU(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Skipf("test devices need root and the real tools: %v", err)
	}
	v1dir := buildPi4(t)
	v1 := filepath.Join(v1dir, "image.img")
	recipe := filepath.Join(work, "v2", "rpi4-appliance")
	if err := copyDir("../../recipes/rpi4-appliance", recipe); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(recipe, "rootfs/etc/motd"), []byte("kiln appliance, version 2\n"), 0o644)
	out := filepath.Join(work, "out-v2")
	run(t, filepath.Join(work, "kiln"), "image", "build", "--store", stores[0], "--out", out, recipe)
	m1, m2 := manifest(t, v1dir), manifest(t, out)
	if m1.Derivation == m2.Derivation {
		t.Fatal("a changed motd did not change the derivation")
	}

	f := sshtest.Start(t)
	dev, err := f.AddDevice(v1)
	if err != nil {
		t.Fatal(err)
	}
	dial := ssh.DialerFor(ssh.Addr{User: "root", Host: dev.Addr, Port: 22}, ssh.Options{KnownHosts: f.KnownHosts, KeyFiles: []string{f.ClientKey}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := sshdev.Update(ctx, dial, dev.Name, filepath.Join(out, "image.img"), sshdev.UpdateOptions{BootTimeout: 30 * time.Second, Log: t.Logf})
	if err != nil || !res.Committed || res.To != "b" {
		t.Fatalf("update: %v %+v", err, res)
	}
	t.Logf("update sent %d of %d bytes with stock tools, write+verify %.1fs", res.BytesSent, res.BytesImage, res.WriteSec)

	// The card as the device leaves it, read from its loop device.
	card := filepath.Join(t.TempDir(), "card.img")
	run(t, "dd", "if="+dev.Loop, "of="+card, "bs=1M", "status=none")
	config, _ := part(card, m2, "config")
	autoboot := run(t, "mtype", "-i", config, "::autoboot.txt")
	bootPart := 0
	for _, line := range strings.Split(autoboot, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "boot_partition="); ok {
			bootPart, _ = strconv.Atoi(v)
			break // the first is [all]'s: the committed slot
		}
	}
	var bootName string
	for _, p := range m2.Metadata.Partitions {
		if p.Number == bootPart {
			bootName = p.Name
		}
	}
	if bootName != "boot-b" {
		t.Fatalf("autoboot.txt commits partition %d (%q), want boot-b:\n%s", bootPart, bootName, autoboot)
	}
	boot, _ := part(card, m2, bootName)
	console := bootInQEMU(t, card, boot, m2.Derivation)
	if !strings.Contains(console, "mounted /dev/mmcblk0p6") {
		t.Errorf("the new root slot was not mounted from the SD card's partition 6:\n%s", tail(console, 20))
	}
}

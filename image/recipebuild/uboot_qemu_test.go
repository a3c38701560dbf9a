package recipebuild_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/blockdev"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/image/uboot"
)

// cachedBuild builds the image recipe in dir with the kiln binary, or takes
// it from $HOME/.cache/kiln-test/image-<derivation> (outside the checkout,
// keyed by the recipe's derivation hash, which covers every input).
func cachedBuild(t *testing.T, dir string) string {
	t.Helper()
	kiln := filepath.Join(work, "kiln")
	hash := strings.TrimSpace(run(t, kiln, "hash", dir))
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(home, ".cache", "kiln-test", "image-"+hash)
	if _, err := os.Stat(filepath.Join(out, recipebuild.ManifestFile)); err == nil {
		return out
	}
	tmp := out + ".tmp"
	os.RemoveAll(tmp)
	run(t, kiln, "image", "build", "--store", stores[0], "--out", tmp, dir)
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// localDevice runs the updater's shell commands on this machine, as if it
// were the device whose card is the loop device: in a private mount
// namespace where /proc/cmdline names the running slot's root and /run
// (the update lock) is a directory of the test's.
type localDevice struct{ cmdline, run string }

func (l localDevice) Run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	c := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /proc/cmdline && mount --bind "$2" /run && exec sh -c "$3"`, "sh", l.cmdline, l.run, cmd)
	var stderr bytes.Buffer
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, &stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (localDevice) Close() error { return nil }

// stage runs kiln update's write-and-arm half (sshdev.StageImage: the
// image's slot written to the card's inactive slot with the shell device's
// commands, proven by their own hash, the trial armed by rewriting
// uboot.env in place and reading it back) against the card dev, whose
// running system is the one with root PARTUUID running. The page caches
// of the card are dropped before and after, so what QEMU and mtools read
// is what is on the medium.
func stage(t *testing.T, dev, image, running string) *sshdev.UpdateResult {
	t.Helper()
	flushCard(t, dev)
	dir := t.TempDir()
	cmdline := filepath.Join(dir, "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyAMA0 root=PARTUUID="+running+" rootwait\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "run"), 0o755)
	img := readABImage(t, image)
	dial := func(context.Context) (ssh.RunCloser, error) {
		return localDevice{cmdline, filepath.Join(dir, "run")}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := sshdev.StageImage(ctx, dial, "card", img, sshdev.UpdateOptions{Disk: dev, Log: t.Logf})
	if err != nil {
		t.Fatalf("kiln's update (write and arm): %v", err)
	}
	flushCard(t, dev)
	return res
}

// readABImage opens an A/B image file for the test's length.
func readABImage(t *testing.T, image string) *ab.Image {
	t.Helper()
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	img, err := ab.ReadImage(image, f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imageRoot returns the PARTUUID of the root of the image's first slot.
func imageRoot(t *testing.T, image string) string {
	t.Helper()
	img := readABImage(t, image)
	return img.Root.PartUUID
}

// flushCard writes back and drops the page caches of the card and its
// partitions (each block device has its own).
func flushCard(t *testing.T, dev string) {
	t.Helper()
	parts, _ := filepath.Glob(dev + "p*")
	for _, d := range append([]string{dev}, parts...) {
		run(t, "blockdev", "--flushbufs", d)
	}
}

// cardEnv reads uboot.env from the card's first partition with kiln's
// decoder and with the real fw_printenv, which must agree.
func cardEnv(t *testing.T, fat string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	run(t, "mcopy", "-n", "-i", fat, "::"+recipebuild.UBootEnv, dir)
	b, _ := os.ReadFile(filepath.Join(dir, recipebuild.UBootEnv))
	env, err := uboot.DecodeEnv(b)
	if err != nil {
		t.Fatalf("uboot.env on the card: %v", err)
	}
	fw := fwPrintenv(t, fat)
	for k, v := range env {
		if fw[k] != v {
			t.Errorf("fw_printenv says %s=%q, kiln reads %q", k, fw[k], v)
		}
	}
	return env
}

// putEnv writes env as the card's uboot.env (kiln's encoding, put in place
// with mtools): the test's own configuration of the card (a boot limit of 1
// keeps the QEMU boots few).
func putEnv(t *testing.T, fat string, env map[string]string) {
	t.Helper()
	b, err := uboot.EncodeEnv(env, uboot.EnvSize)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), recipebuild.UBootEnv)
	os.WriteFile(f, b, 0o644)
	run(t, "mcopy", "-o", "-n", "-i", fat, f, "::"+recipebuild.UBootEnv)
}

// bootUBoot boots the card on QEMU's raspi3b the way the Pi firmware would
// go on: U-Boot and the device tree from the card's first partition, then
// whatever U-Boot's boot.scr decides. The card is writable (U-Boot's
// saveenv and the system's mark-good land on it). It returns the console
// once a line holds until.
func bootUBoot(t *testing.T, card, fat, until string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-aarch64"); err != nil {
		t.Fatalf("qemu-system-aarch64 is not installed (make deps installs qemu-system-arm): %v", err)
	}
	dir := t.TempDir()
	run(t, "mcopy", "-n", "-i", fat, "::"+recipebuild.UBootBin, "::bcm2837-rpi-3-b.dtb", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// U-Boot talks on the mini UART (serial1), Linux on the PL011
	// (serial0): both go to one multiplexed stdio.
	cmd := exec.CommandContext(ctx, "qemu-system-aarch64", "-M", "raspi3b", "-display", "none", "-no-reboot",
		"-chardev", "stdio,mux=on,id=c0", "-serial", "chardev:c0", "-serial", "chardev:c0", "-monitor", "none",
		"-kernel", filepath.Join(dir, recipebuild.UBootBin), "-dtb", filepath.Join(dir, "bcm2837-rpi-3-b.dtb"),
		"-drive", "file="+card+",if=sd,format=raw")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var console bytes.Buffer
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		if strings.Contains(line, until) {
			return console.String()
		}
		if strings.Contains(line, "Kernel panic") || strings.Contains(line, "SCRIPT FAILED") || strings.Contains(line, "kiln-boot: booting slot") {
			break
		}
	}
	t.Fatalf("no %q within the time bound (%v); console:\n%s", until, ctx.Err(), tail(console.String(), 40))
	return ""
}

func mustContain(t *testing.T, what, console string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(console, w) {
			t.Fatalf("%s: the console has no %q:\n%s", what, w, tail(console, 30))
		}
	}
}

// writtenCard is the card the test boots: as root, a loop device the size
// of the image, written by kiln's SD-card writer (flash/blockdev) from
// image.img.xz and its bmap, so the card QEMU boots is one the writer
// proved, with its partitions added as block devices (kiln's updater
// writes the slots through /dev/loopNpM).
func writtenCard(t *testing.T, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "image.img")
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	card := filepath.Join(t.TempDir(), "card.img")
	if _, err := exec.LookPath("losetup"); os.Geteuid() != 0 || err != nil {
		t.Skip("the card is a loop device written by kiln's SD writer and updated through its partitions: that needs root")
	}
	f, err := os.Create(card)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(st.Size())
	f.Close()
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", card))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	bf, err := os.Open(filepath.Join(dir, "image.bmap"))
	if err != nil {
		t.Fatal(err)
	}
	bm, err := disk.ReadBmap(bf)
	bf.Close()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := blockdev.Write(context.Background(), dev, img+".xz", blockdev.Options{Bmap: bm, Force: true})
	if err != nil || !rep.Verified {
		t.Fatalf("kiln's SD writer: %v %+v", err, rep)
	}
	t.Logf("card written by flash/blockdev to %s: %d of %d bytes, read back and proven", dev, rep.BytesWritten, rep.ImageSize)
	// The partitions as block devices (/dev/loopNpM), for the updater.
	if err := sshtest.AddPartitions(dev); err != nil {
		t.Fatal(err)
	}
	return dev
}

// TestUBootABInQEMU: the A/B decision made by the real U-Boot of the image
// (Debian's u-boot-rpi from its first partition) running kiln's boot.scr on
// QEMU's raspi3b, with nothing on the test's side deciding: a fresh card
// boots slot a; after kiln's updater writes slot b and arms a trial
// (sshdev.StageImage over the card's loop device), U-Boot boots b; a
// b that never marks itself good is abandoned for a once the boot limit is
// passed; a b that marks itself good (its initramfs rewrites uboot.env)
// stays. After every boot the environment is read back with fw_printenv.
func TestUBootABInQEMU(t *testing.T) {
	buildTwice(t)
	m1 := manifest(t, builds[0])
	// v2: another motd, and no health marker: it never marks itself good.
	v2src := filepath.Join(work, "v2-unhealthy", "rpi-appliance")
	if err := copyDir("../../recipes/rpi-appliance", v2src); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(v2src, "rootfs/etc/motd"), []byte("kiln appliance, version 2 (fails its health check)\n"), 0o644)
	if err := os.Rename(filepath.Join(v2src, "rootfs/etc/kiln/healthy"), filepath.Join(v2src, "rootfs/etc/kiln/unhealthy")); err != nil {
		t.Fatal(err)
	}
	v2 := cachedBuild(t, v2src)
	m2 := manifest(t, v2)
	if m2.Derivation == m1.Derivation {
		t.Fatal("v2 has v1's derivation")
	}

	card := writtenCard(t, builds[0])
	fat, _ := part(card, m1, "config")

	// 1. A fresh card: slot a, nothing on trial, so nothing is written.
	c := bootUBoot(t, card, fat, "kiln-initramfs: done")
	mustContain(t, "fresh card", c, "kiln-boot: slot a ", "mounted /dev/mmcblk0p5", "kiln: derivation "+m1.Derivation)
	if env := cardEnv(t, fat); env["boot_slot"] != "a" || env["upgrade_available"] != "0" {
		t.Fatalf("fresh card env: %v", env)
	}

	// 2. kiln's updater writes slot b (v2's slot) and arms a trial; the
	// card is configured for a boot limit of 1 first.
	env := cardEnv(t, fat)
	env["bootlimit"] = "1"
	putEnv(t, fat, env)
	runningA := imageRoot(t, filepath.Join(builds[0], "image.img"))
	if res := stage(t, card, filepath.Join(v2, "image.img"), runningA); res.To != "b" || res.Derivation != m2.Derivation {
		t.Fatalf("staged %+v", res)
	}
	if got := cardEnv(t, fat); got["boot_slot"] != "b" || got["boot_fallback"] != "a" || got["upgrade_available"] != "1" || got["bootcount"] != "0" {
		t.Fatalf("armed env: %v", got)
	}
	c = bootUBoot(t, card, fat, "kiln-initramfs: done")
	mustContain(t, "trial of b", c, "kiln-boot: slot b ", "bootcount=1 bootlimit=1", "mounted /dev/mmcblk0p6", "kiln: derivation "+m2.Derivation)
	if strings.Contains(c, "marked slot good") {
		t.Fatal("the unhealthy v2 marked itself good")
	}
	if env := cardEnv(t, fat); env["boot_slot"] != "b" || env["bootcount"] != "1" || env["upgrade_available"] != "1" {
		t.Fatalf("after one trial boot: %v", env)
	}
	// Never marked good: the next boot passes the limit and U-Boot itself
	// goes back to slot a.
	c = bootUBoot(t, card, fat, "Starting kernel")
	mustContain(t, "trial limit passed", c, "slot b was not marked good in 1 boots: back to slot a", "kiln-boot: slot a ")
	if env := cardEnv(t, fat); env["boot_slot"] != "a" || env["upgrade_available"] != "0" || env["bootcount"] != "0" {
		t.Fatalf("after the fallback: %v", env)
	}

	// 3. A healthy slot b (v1's slot, which marks itself good) on trial,
	// written and armed by kiln's updater again.
	stage(t, card, filepath.Join(builds[0], "image.img"), runningA)
	c = bootUBoot(t, card, fat, "kiln-initramfs: done")
	mustContain(t, "healthy trial", c, "kiln-boot: slot b ", "mounted /dev/mmcblk0p6", "kiln: derivation "+m1.Derivation, "marked slot good")
	if env := cardEnv(t, fat); env["boot_slot"] != "b" || env["upgrade_available"] != "0" || env["bootcount"] != "0" {
		t.Fatalf("after marking good: %v", env)
	}
	c = bootUBoot(t, card, fat, "Starting kernel")
	mustContain(t, "committed b", c, "kiln-boot: slot b (boot mmc 0:3, root mmc 0:6) upgrade_available=0")
}

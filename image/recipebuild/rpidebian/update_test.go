package rpidebian_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ab/abtest"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/recipes"
)

// variantImage builds a copy of recipes/rpi-debian with files of its
// overlay replaced (path relative to the recipe → content): a rebuild with a
// changed service. Cached in $HOME/.cache/kiln-test/image-<derivation> like
// rpiDebianImage's builds; it returns the output directory and derivation.
// The same lock makes the same Debian root: a variant's fresh store is
// seeded with the root build 1 kept, so it only lays its overlay over it.
func variantImage(t *testing.T, name string, edits map[string]string) (string, string) {
	t.Helper()
	needRootfsSandbox(t)
	rpiDebianImage(t, 1)
	dir := checkout(t, "variant-"+name)
	for p, content := range edits {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hash := strings.TrimSpace(run(t, kilnBinary(t), "hash", dir))
	cache := testCache(t, "image-"+hash)
	if _, err := os.Stat(filepath.Join(cache, "manifest.json")); err != nil {
		out := buildDebian(t, dir, "variant-"+name, true)
		os.RemoveAll(cache + ".tmp")
		run(t, "cp", "-a", out, cache+".tmp")
		if err := os.Rename(cache+".tmp", cache); err != nil {
			t.Fatal(err)
		}
	}
	return cache, hash
}

// virtBoard runs a card image on QEMU's -M virt with a boot decision made
// by the test: there is no Pi firmware and no U-Boot under -M virt, so
// before every boot the board reads uboot.env from the card's partition 1,
// runs abtest.UBootChoose (the Go model of kiln's boot.scr that sshtest's
// U-Boot stand-in also uses), writes the environment back when the model
// saves it (saveenv), and starts QEMU with the chosen slot's kernel and
// initramfs from its boot partition and boot.scr's command line (the
// recipe's cmdline + root=PARTUUID of the slot's root) on the same writable
// card. QEMU runs with -no-reboot: a reboot or power-off of the guest ends
// QEMU, and the board boots again.
type virtBoard struct {
	img     string
	layout  *disk.Metadata
	cmdline string
	port    int

	mu      sync.Mutex
	console bytes.Buffer
	boots   []string
}

func (b *virtBoard) partition(n int) disk.MetaPartition {
	for _, p := range b.layout.Partitions {
		if p.Number == n {
			return p
		}
	}
	return disk.MetaPartition{}
}

// choose is one run of boot.scr over the card's uboot.env: the slot, with
// the environment saved onto the card if the script saves it.
func (b *virtBoard) choose() (disk.Slot, error) {
	f, err := os.OpenFile(b.img, os.O_RDWR, 0)
	if err != nil {
		return disk.Slot{}, err
	}
	defer f.Close()
	p1 := b.partition(1)
	env, err := disk.ReadFile(disk.FromReaderAt(io.NewSectionReader(f, p1.Start, p1.Size), p1.Size), "uboot.env", 1<<20)
	if err != nil {
		return disk.Slot{}, fmt.Errorf("uboot.env on the card: %w", err)
	}
	var names []string
	for _, s := range b.layout.Slots {
		names = append(names, s.Name)
	}
	name, _, saved, note := abtest.UBootChoose(env.Data, names)
	if !bytes.Equal(saved, env.Data) {
		pos := int64(0)
		for _, x := range env.Extents {
			if _, err := f.WriteAt(saved[pos:pos+x.Len], p1.Start+x.Off); err != nil {
				return disk.Slot{}, fmt.Errorf("saveenv: %w", err)
			}
			pos += x.Len
		}
		if err := f.Sync(); err != nil {
			return disk.Slot{}, err
		}
	}
	b.mu.Lock()
	b.boots = append(b.boots, "slot "+name+note)
	b.mu.Unlock()
	for _, s := range b.layout.Slots {
		if s.Name == name {
			return s, nil
		}
	}
	return disk.Slot{}, fmt.Errorf("boot.scr chose slot %q, which kiln.json does not list", name)
}

// boot boots the card once and returns when QEMU exits.
func (b *virtBoard) boot(ctx context.Context, files string) error {
	s, err := b.choose()
	if err != nil {
		return err
	}
	bp := b.partition(s.Boot)
	part := fmt.Sprintf("%s@@%d", b.img, bp.Start)
	kernel, initrd := filepath.Join(files, "kernel8.img"), filepath.Join(files, "initramfs.gz")
	os.Remove(kernel)
	os.Remove(initrd)
	cp := exec.CommandContext(ctx, "mcopy", "-n", "-i", part, "::kernel8.img", "::initramfs.gz", files)
	cp.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cp.CombinedOutput(); err != nil {
		return fmt.Errorf("slot %s: boot files: %v\n%s", s.Name, err, out)
	}
	cmd := exec.CommandContext(ctx, "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", "2", "-m", "1024",
		"-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", b.cmdline+" root=PARTUUID="+s.RootPartUUID,
		"-drive", "if=none,id=disk,format=raw,file="+b.img, "-device", "virtio-blk-pci,drive=disk",
		"-netdev", fmt.Sprintf("user,id=net,hostfwd=tcp:127.0.0.1:%d-:22", b.port), "-device", "virtio-net-pci,netdev=net,romfile=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		b.mu.Lock()
		b.console.WriteString(sc.Text() + "\n")
		b.mu.Unlock()
	}
	return cmd.Wait()
}

// run boots the card again every time QEMU exits, until ctx ends.
func (b *virtBoard) run(ctx context.Context, files string) error {
	for {
		err := b.boot(ctx, files)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if _, ok := err.(*exec.ExitError); !ok {
				return err
			}
		}
	}
}

func (b *virtBoard) log() (boots []string, console string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.boots...), tail(b.console.String(), 60)
}

// cardSession is a card flashed with the image in base, running on a
// virtBoard, reachable over SSH with the example key.
type cardSession struct {
	t     *testing.T
	ctx   context.Context
	b     *virtBoard
	m     *recipebuild.Result
	known string
	key   string
	start time.Time
}

// startCard flashes a writable copy of base's image and boots it until
// slot a is up and sshd answers; the board stops at the end of the test.
func startCard(t *testing.T, base string) *cardSession {
	if _, err := exec.LookPath("qemu-system-aarch64"); err != nil {
		t.Fatalf("qemu-system-aarch64 is not installed (make deps installs qemu-system-arm): %v", err)
	}
	m := manifest(t, base)
	r, err := recipes.Load(rpiDebian)
	if err != nil {
		t.Fatal(err)
	}
	card := filepath.Join(t.TempDir(), "card.img")
	run(t, "cp", "--sparse=always", filepath.Join(base, "image.img"), card)
	s := &cardSession{t: t, m: m, start: time.Now(), b: &virtBoard{img: card, layout: m.Metadata,
		cmdline: r.KindData.(*recipes.ImageSpec).RPi.Cmdline, port: freePort(t)}}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	s.ctx = ctx
	done := make(chan error, 1)
	boardCtx, stopBoard := context.WithCancel(ctx)
	files := t.TempDir()
	go func() { done <- s.b.run(boardCtx, files) }()
	t.Cleanup(func() {
		stopBoard()
		if err := <-done; err != nil {
			t.Errorf("board: %v", err)
		}
		cancel()
	})
	// Up means systemd itself says the boot finished with
	// multi-user.target active, asked over SSH, and /proc/cmdline names
	// slot a's root. Not the console's "Reached target" line: systemd stops
	// printing status once serial-getty (Type=idle, so up to 5 s late)
	// takes the console, and under load that happens before multi-user.
	upCtx, upDone := context.WithCancel(ctx)
	go func() {
		select {
		case err := <-done:
			done <- err
			upDone()
		case <-upCtx.Done():
		}
	}()
	known, state, err := waitUp(upCtx, t, s.b.port, exampleKey(t))
	upDone()
	if err != nil {
		s.fail("slot a did not come up: %v", err)
	}
	if want := "root=PARTUUID=" + m.Metadata.Slots[0].RootPartUUID; !strings.Contains(state, want) {
		s.fail("first boot is not slot a: /proc/cmdline lacks %q:\n%s", want, state)
	}
	t.Logf("slot a up %v after QEMU started", time.Since(s.start).Round(time.Second))
	s.known, s.key = known, exampleKey(t)
	return s
}

func (s *cardSession) fail(format string, args ...any) {
	s.t.Helper()
	boots, console := s.b.log()
	s.t.Fatalf("%s\nboots: %q\nconsole:\n%s", fmt.Sprintf(format, args...), boots, console)
}

var (
	helperOnce sync.Once
	helperErr  error
)

// update runs kiln update (the binary) with the image's health check. The
// device-side helper for arm64 sits beside the binary, as make build puts
// it, so the device hashes and applies blocks with it.
func (s *cardSession) update(img string) (string, string, int) {
	s.t.Helper()
	helperOnce.Do(func() {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(filepath.Dir(kilnBinary(s.t)), "kiln-helper-arm64"), "kiln.dev/kiln/cmd/kiln-helper")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if out, err := cmd.CombinedOutput(); err != nil {
			helperErr = fmt.Errorf("go build kiln-helper for arm64: %v\n%s", err, out)
		}
	})
	if helperErr != nil {
		s.t.Fatal(helperErr)
	}
	cmd := exec.CommandContext(s.ctx, kilnBinary(s.t), "update", "--port", fmt.Sprintf("ssh://root@127.0.0.1:%d/dev/vda", s.b.port),
		"--health", "kiln-health", "--health-timeout", "90s", "--boot-timeout", "150s",
		"--ssh-key", s.key, "--known-hosts", s.known, "--log", "off", "--json", img)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// device asks the running system, through kiln's SSH client, for its
// derivation, its kernel command line, the example service's page and
// the health check's verdict.
func (s *cardSession) device() string {
	s.t.Helper()
	dial := ssh.DialerFor(ssh.Addr{User: "root", Host: "127.0.0.1", Port: s.b.port}, ssh.Options{KnownHosts: s.known, KeyFiles: []string{s.key}})
	c, err := dial(s.ctx)
	if err != nil {
		s.fail("kiln's SSH client: %v", err)
	}
	defer c.Close()
	var out bytes.Buffer
	if err := c.Run(s.ctx, "cat /etc/kiln/derivation /proc/cmdline; busybox wget -q -O - http://127.0.0.1:8080/; kiln-health", nil, &out); err != nil {
		s.fail("device check over SSH: %v\n%s", err, out.String())
	}
	return out.String()
}

// audit asks what kiln audit --port asks after its rebuild (op.CheckSlot,
// the function it calls): the running slot's root and boot partitions,
// hashed on the device past its page cache, against img's slot as an
// update writes it.
func (s *cardSession) audit(img string) *sshdev.SlotCheck {
	s.t.Helper()
	t0 := time.Now()
	chk, _, err := op.CheckSlot(s.ctx, fmt.Sprintf("ssh://root@127.0.0.1:%d/dev/vda", s.b.port),
		op.DiskOptions{KnownHosts: s.known, KeyFiles: []string{s.key}}, img)
	if err != nil {
		s.fail("audit of the running slot against %s: %v", img, err)
	}
	s.t.Logf("audit against %s: slot %s, root %s (rebuild %s), boot %s (rebuild %s), %v",
		filepath.Base(filepath.Dir(img)), chk.Slot, chk.RootSHA256[:12], chk.WantRoot[:12], chk.BootSHA256[:12], chk.WantBoot[:12],
		time.Since(t0).Round(time.Second))
	return chk
}

// updateReport is the part of kiln update --json the test reads.
type updateReport struct {
	Update struct {
		Committed   bool    `json:"committed"`
		To          string  `json:"to_slot"`
		BytesSent   int64   `json:"bytes_sent"`
		BytesImage  int64   `json:"bytes_image"`
		WriteVerify float64 `json:"write_verify_s"`
		UsedHelper  bool    `json:"used_helper"`
	}
}

// TestRPiDebianUpdateInQEMU (issue 17, must-show 3, second half): kiln
// update, through the kiln binary, updates rpi-debian running in QEMU to a
// rebuild whose example service answers differently; the trial boot passes
// the image's real health check (kiln-health: systemctl is-system-running
// --wait, then the service's own answer) and is committed, and the device
// runs the new root. Then a rebuild whose service fails its health check is
// rolled back: the device runs the previous root again. Before and after the
// first update the running slot is audited as kiln audit --port does it
// (issue 17's "kiln audit on a device compares the running root with a
// rebuild"): identical to build 2 (an independent rebuild) at first,
// different from it and identical to the changed service's build after.
//
// Not the Pi's boot chain: under -M virt there is no Pi firmware and no
// U-Boot, so the boot decision is the TEST's model of kiln's boot.scr
// (virtBoard, abtest.UBootChoose over the card's uboot.env), not U-Boot.
// The real U-Boot running boot.scr is tested on raspi3b in
// image/recipebuild's TestUBootABInQEMU. Everything else is real: kiln's
// updater writes the slot and arms, commits and disarms the trial in
// uboot.env over SSH on the device's /dev/vda; the kernel, initramfs,
// systemd, sshd and the health check are the images'.
func TestRPiDebianUpdateInQEMU(t *testing.T) {
	base := rpiDebianImage(t, 1)
	good, goodDrv := variantImage(t, "good", map[string]string{
		"rootfs/srv/kiln-hello/index.html": "<!doctype html><title>kiln</title><p>Hello from the updated Debian root (kiln update test).</p>\n",
	})
	bad, badDrv := variantImage(t, "bad", map[string]string{
		"rootfs/srv/kiln-hello/health": "broken\n",
	})
	rebuild := filepath.Join(rpiDebianImage(t, 2), "image.img")
	s := startCard(t, base)
	m, fail, update, device, b, start := s.m, s.fail, s.update, s.device, s.b, s.start

	// 0. kiln audit on the device (issue 17): the running root is build 1's,
	// and build 2 — another checkout, another store, its Debian root
	// assembled from scratch — is the rebuild it is compared with.
	if chk := s.audit(rebuild); !chk.Match || chk.Slot != "a" {
		fail("audit of the freshly flashed device against an independent rebuild: %+v", chk)
	}

	// 1. A rebuild with a changed service: committed after the real health
	// check on its trial boot; the device runs it.
	t0 := time.Now()
	out, errs, code := update(filepath.Join(good, "image.img"))
	if code != 0 {
		fail("kiln update to the changed service: exit %d\n%s%s", code, out, errs)
	}
	var res updateReport
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Update.Committed || res.Update.To != "b" {
		fail("kiln update report: %v\n%s", err, out)
	}
	t.Logf("update a -> b committed in %v: %d of %d bytes sent, write+verify %.0f s, helper %v",
		time.Since(t0).Round(time.Second), res.Update.BytesSent, res.Update.BytesImage, res.Update.WriteVerify, res.Update.UsedHelper)
	got := device()
	t.Logf("device after the update:\n%s", got)
	for _, want := range []string{goodDrv, "root=PARTUUID=" + m.Metadata.Slots[1].RootPartUUID, "Hello from the updated Debian root", "kiln-health: ok"} {
		if !strings.Contains(got, want) {
			fail("after the update the device output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, m.Derivation) {
		fail("after the update the device still reports the old derivation %s", m.Derivation)
	}
	// The audit tells the device's new root from the old rebuild, and
	// proves it is the changed service's.
	if chk := s.audit(rebuild); chk.Match || chk.Slot != "b" || chk.RootSHA256 == chk.WantRoot {
		fail("audit after the update against the old rebuild: %+v, want the root to differ", chk)
	}
	if chk := s.audit(filepath.Join(good, "image.img")); !chk.Match || chk.Slot != "b" {
		fail("audit after the update against the changed service's build: %+v", chk)
	}

	// 2. A rebuild whose service fails its health check: the trial on slot
	// a fails kiln-health, kiln rolls back, the device runs b again.
	t0 = time.Now()
	out, errs, code = update(filepath.Join(bad, "image.img"))
	if code == 0 {
		fail("kiln update to a failing service succeeded:\n%s%s", out, errs)
	}
	if !strings.Contains(out+errs, "roll") {
		fail("kiln update to a failing service: exit %d without a rollback:\n%s%s", code, out, errs)
	}
	t.Logf("failing update rolled back in %v (exit %d): %s", time.Since(t0).Round(time.Second), code, strings.TrimSpace(errs))
	if json.Unmarshal([]byte(out), &res) == nil {
		t.Logf("failing update: %d of %d bytes sent, write+verify %.0f s", res.Update.BytesSent, res.Update.BytesImage, res.Update.WriteVerify)
	}
	got = device()
	t.Logf("device after the rollback:\n%s", got)
	for _, want := range []string{goodDrv, "root=PARTUUID=" + m.Metadata.Slots[1].RootPartUUID, "Hello from the updated Debian root", "kiln-health: ok"} {
		if !strings.Contains(got, want) {
			fail("after the rollback the device output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, badDrv) {
		fail("after the rollback the device runs the failing rebuild %s", badDrv)
	}
	boots, _ := b.log()
	t.Logf("boot decisions (the test's model of boot.scr): %q", boots)
	want := []string{"slot a bootcount=0", "slot b bootcount=1", "slot a bootcount=1", "slot b bootcount=0"}
	if strings.Join(boots, "|") != strings.Join(want, "|") {
		t.Errorf("boots %q, want %q", boots, want)
	}
	t.Logf("whole test after the images were ready: %v", time.Since(start).Round(time.Second))
}

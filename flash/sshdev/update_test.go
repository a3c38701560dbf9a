package sshdev

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
)

var helperDir string

func TestMain(m *testing.M) {
	if sshtest.Available() == nil {
		dir, err := os.MkdirTemp("", "kiln-helper-")
		if err == nil {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "kiln-helper-"+runtime.GOARCH), "kiln.dev/kiln/cmd/kiln-helper")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				os.Stderr.Write(out)
				os.Exit(1)
			}
			helperDir = dir
		}
	}
	code := m.Run()
	if helperDir != "" {
		os.RemoveAll(helperDir)
	}
	os.Exit(code)
}

// fleet starts n devices holding img.
func fleet(t *testing.T, n int, spec sshtest.ImageSpec) (*sshtest.Fleet, []*sshtest.Device, string) {
	t.Helper()
	f := sshtest.Start(t)
	img, err := sshtest.BuildImage(f.Dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	var devs []*sshtest.Device
	for i := 0; i < n; i++ {
		d, err := f.AddDevice(img)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	return f, devs, img
}

func dialer(f *sshtest.Fleet, d *sshtest.Device) ssh.Dialer {
	return ssh.DialerFor(ssh.Addr{User: "root", Host: d.Addr, Port: 22}, ssh.Options{KnownHosts: f.KnownHosts, KeyFiles: []string{f.ClientKey}, Timeout: 5 * time.Second})
}

func partHash(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkSlotB checks, by the host's own reading of the loop device, that the
// device's slot b root holds exactly the image's slot a root, and that the
// update reported that hash.
func checkSlotB(t *testing.T, dev *sshtest.Device, image string, res *UpdateResult) {
	t.Helper()
	f, img, err := openImage(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src := img.Root
	want := sha256.New()
	io.Copy(want, io.NewSectionReader(f, src.Start, src.Size))
	if got := partHash(t, dev.PartDev(5), src.Size); got != hex.EncodeToString(want.Sum(nil)) || got != res.RootSHA256 {
		t.Fatalf("slot b root %s, image %x, reported %s", got, want.Sum(nil), res.RootSHA256)
	}
}

func fastOpts() UpdateOptions {
	return UpdateOptions{Health: "/usr/bin/health", HealthTimeout: 3 * time.Second, BootTimeout: 15 * time.Second, HelperDir: helperDir, BlockSize: 64 << 10}
}

func TestUpdateCommitsNewSlot(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "1111111111111111aaaa", Seed: 1})
	dev := devs[0]
	v2, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "2222222222222222bbbb", Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The first update sends whole partitions, the second only what changed.
	opts := fastOpts()
	opts.NoDelta = true
	var mu sync.Mutex
	progress := map[string][2]int64{}
	opts.Progress = func(phase string, done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if p := progress[phase]; done < p[0] {
			t.Errorf("%s progress went back from %d to %d", phase, p[0], done)
		}
		progress[phase] = [2]int64{done, total}
	}
	checkProgress := func() {
		t.Helper()
		for _, phase := range []string{"root", "boot"} {
			if p := progress[phase]; p[1] == 0 || p[0] != p[1] {
				t.Errorf("%s progress ended at %d of %d", phase, p[0], p[1])
			}
		}
		clear(progress)
	}
	res, err := Update(ctx, dialer(f, dev), dev.Name, v2, opts)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	checkProgress()
	if !res.Committed || res.RolledBack || res.From != "a" || res.To != "b" {
		t.Fatalf("result %+v", res)
	}
	if dev.Root() != 5 || dev.BootPartition() != 3 {
		t.Fatalf("device runs root %d from boot %d, want 5 from 3", dev.Root(), dev.BootPartition())
	}
	checkSlotB(t, dev, v2, res)
	// A power cycle keeps the committed slot.
	if err := dev.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if dev.Root() != 5 {
		t.Fatalf("after power cycle the device runs root %d", dev.Root())
	}
	// A second update goes back to slot a.
	v3, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "3333333333333333cccc", Seed: 2, Changed: 0.01, ChangeSeed: 3})
	opts.NoDelta = false
	res, err = Update(ctx, dialer(f, dev), dev.Name, v3, opts)
	if err != nil || !res.Committed || res.To != "a" || dev.Root() != 4 {
		t.Fatalf("second update: %v %+v running %d", err, res, dev.Root())
	}
	checkProgress()
	if !res.UsedHelper {
		t.Errorf("helper was not used")
	}
	t.Logf("second update sent %d bytes for a %d-byte slot", res.BytesSent, res.BytesImage)
}

func TestUpdateRollsBackOnFailingHealthCheck(t *testing.T) {
	for _, tc := range []struct{ name, script, reason string }{
		{"failing", "exit 1", "health check failed"},
		{"hanging", "sleep 600", "health check did not finish"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "4444444444444444dddd", Seed: 4})
			dev := devs[0]
			dev.SetHealth(tc.script)
			v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "5555555555555555eeee", Seed: 5})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := Update(ctx, dialer(f, dev), dev.Name, v2, fastOpts())
			if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %v", err)
			}
			if res.Committed || !res.RolledBack || dev.Root() != 4 || dev.BootPartition() != 2 {
				t.Fatalf("result %+v, device on root %d", res, dev.Root())
			}
			if err := dev.PowerCycle(); err != nil || dev.Root() != 4 {
				t.Fatalf("power cycle: %v, root %d", err, dev.Root())
			}
		})
	}
}

func TestUpdateRefusesWrongHostKey(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "6666666666666666ffff", Seed: 6})
	dev := devs[0]
	before := partHash(t, dev.PartDev(5), 8<<20)
	// known_hosts that names the device with another key.
	other := filepath.Join(f.Dir, "other")
	exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).Run()
	pub, _ := os.ReadFile(other + ".pub")
	kh := filepath.Join(f.Dir, "wrong_known_hosts")
	os.WriteFile(kh, []byte(dev.Addr+" "+strings.Join(strings.Fields(string(pub))[:2], " ")+"\n"), 0o600)
	d := ssh.DialerFor(ssh.Addr{User: "root", Host: dev.Addr, Port: 22}, ssh.Options{KnownHosts: kh, KeyFiles: []string{f.ClientKey}})
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "7777777777777777abab", Seed: 7})
	_, err := Update(context.Background(), d, dev.Name, v2, fastOpts())
	if !errors.Is(err, ssh.ErrHostKey) || !strings.Contains(err.Error(), "CHANGED") {
		t.Fatalf("err = %v", err)
	}
	// An unknown host is refused too.
	empty := filepath.Join(f.Dir, "empty_known_hosts")
	os.WriteFile(empty, nil, 0o600)
	d = ssh.DialerFor(ssh.Addr{User: "root", Host: dev.Addr, Port: 22}, ssh.Options{KnownHosts: empty, KeyFiles: []string{f.ClientKey}})
	if _, err := Update(context.Background(), d, dev.Name, v2, fastOpts()); !errors.Is(err, ssh.ErrHostKey) {
		t.Fatalf("unknown host: err = %v", err)
	}
	if after := partHash(t, dev.PartDev(5), 8<<20); after != before || dev.Boots() != 1 {
		t.Fatalf("device touched: slot b changed %v, boots %d", after != before, dev.Boots())
	}
}

func TestUpdateCutMidWriteKeepsOldSlot(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "8888888888888888cdcd", Seed: 8, RootSize: 32 << 20, Payload: 24 << 20})
	dev := devs[0]
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "9999999999999999efef", Seed: 9, RootSize: 32 << 20, Payload: 24 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logged []string
	opts := fastOpts()
	opts.NoDelta = true
	opts.Log = func(format string, a ...any) { logged = append(logged, format) }
	errc := make(chan error, 1)
	go func() { _, err := Update(ctx, dialer(f, dev), dev.Name, v2, opts); errc <- err }()
	// Cut the power while the root slot is being written.
	time.Sleep(150 * time.Millisecond)
	dev.PowerCut()
	err := <-errc
	if err == nil {
		t.Fatal("update reported success after the connection was cut")
	}
	if errors.Is(err, flash.ErrVerify) {
		t.Logf("cut surfaced as a verification failure: %v", err)
	}
	if err := dev.Boot(false); err != nil {
		t.Fatalf("device does not boot after the cut: %v", err)
	}
	if dev.Root() != 4 {
		t.Fatalf("device runs root %d after the cut, want the old slot 4", dev.Root())
	}
}

// Without a helper for the device's architecture, or with one that does not
// run there (a noexec /tmp, a CPU the build did not target), kiln uses what a
// Raspberry Pi OS image has: sh, dd and sha256sum (here busybox's).
func TestUpdateWithStockTools(t *testing.T) {
	broken := t.TempDir()
	os.WriteFile(filepath.Join(broken, "kiln-helper-"+runtime.GOARCH), []byte("\x7fELF not really a program"), 0o755)
	for _, tc := range []struct{ name, helperDir string }{{"no helper", ""}, {"helper does not run", broken}} {
		t.Run(tc.name, func(t *testing.T) {
			f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "5151515151515151a5a5", Seed: 15, BothSlots: true})
			dev := devs[0]
			v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "6161616161616161b6b6", Seed: 15, Changed: 0.02, ChangeSeed: 4})
			opts := fastOpts()
			opts.HelperDir = tc.helperDir
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			res, err := Update(ctx, dialer(f, dev), dev.Name, v2, opts)
			if err != nil || !res.Committed || res.UsedHelper || dev.Root() != 5 {
				t.Fatalf("stock-tools update: %v %+v, running root %d", err, res, dev.Root())
			}
			if res.BytesSent*5 > res.BytesImage {
				t.Errorf("delta with stock tools sent %d bytes of %d", res.BytesSent, res.BytesImage)
			}
			checkSlotB(t, dev, v2, res)
			t.Logf("stock tools: %d of %d bytes sent, write+verify %.2fs", res.BytesSent, res.BytesImage, res.WriteSec)
		})
	}
}

// Bad images are refused before a byte reaches the device: not an A/B image,
// a truncated one, one whose slot does not fit the device's.
func TestUpdateRefusesBadImages(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "7171717171717171c7c7", Seed: 17})
	dev := devs[0]
	before := partHash(t, dev.PartDev(5), 8<<20)
	big, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "8181818181818181d8d8", Seed: 18, RootSize: 16 << 20})
	good, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "9191919191919191e9e9", Seed: 19})
	data, _ := os.ReadFile(good)
	truncated := filepath.Join(f.Dir, "truncated.img")
	os.WriteFile(truncated, data[:len(data)-3<<20], 0o644)
	notAB := filepath.Join(f.Dir, "plain.img")
	os.WriteFile(notAB, bytes.Repeat([]byte{0xa5}, 4<<20), 0o644)

	var dials atomic.Int64
	counted := func(ctx context.Context) (ssh.RunCloser, error) { dials.Add(1); return dialer(f, dev)(ctx) }
	for _, tc := range []struct {
		name, path, want string
		dialed           bool
	}{
		{"not an A/B image", notAB, "no partition table", false},
		{"truncated", truncated, "truncated", false},
		{"slot too big for the device", big, "does not fit", true},
	} {
		dials.Store(0)
		_, err := Update(context.Background(), counted, dev.Name, tc.path, fastOpts())
		t.Logf("%s: %v", tc.name, err)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
		if (dials.Load() > 0) != tc.dialed {
			t.Errorf("%s: %d connections to the device", tc.name, dials.Load())
		}
	}
	if after := partHash(t, dev.PartDev(5), 8<<20); after != before || dev.Boots() != 1 || dev.Root() != 4 {
		t.Fatalf("device touched: slot b changed %v, boots %d, root %d", after != before, dev.Boots(), dev.Root())
	}
}

// A device whose system hangs mid-write (every process stopped; its network
// stack still acknowledges) is given up on after Options.Silence without
// keepalive replies, reported as a lost connection — where TCP alone would
// wait many minutes — and its committed slot is untouched.
func TestUpdateDeviceStopsAnswering(t *testing.T) {
	f, devs, _ := fleet(t, 1, sshtest.ImageSpec{Derivation: "a1a1a1a1a1a1a1a1f1f1", Seed: 21, RootSize: 32 << 20, Payload: 24 << 20})
	dev := devs[0]
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "b2b2b2b2b2b2b2b2f2f2", Seed: 22, RootSize: 32 << 20, Payload: 24 << 20})
	if err := dev.LimitRate("20mbit"); err != nil { // the write takes about ten seconds
		t.Fatal(err)
	}
	dial := ssh.DialerFor(ssh.Addr{User: "root", Host: dev.Addr, Port: 22}, ssh.Options{KnownHosts: f.KnownHosts, KeyFiles: []string{f.ClientKey}, Timeout: 5 * time.Second, Silence: 2 * time.Second})
	opts := fastOpts()
	opts.NoDelta = true
	var logged []string
	opts.Log = func(format string, a ...any) { logged = append(logged, fmt.Sprintf(format, a...)) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	frozen := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		frozen <- dev.Freeze()
	}()
	_, err := Update(ctx, dial, dev.Name, v2, opts)
	if ferr := <-frozen; ferr != nil {
		t.Fatal(ferr)
	}
	if !errors.Is(err, ssh.ErrConnLost) || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("err = %v, want the device reported as no longer answering (log: %q)", err, logged)
	}
	dev.Thaw()
	if err := dev.PowerCycle(); err != nil || dev.Root() != 4 {
		t.Fatalf("after the hang the device boots root %d (%v), want the committed 4", dev.Root(), err)
	}
}

package fleet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/flash/ssh/sshtest"
)

func TestDeployInWavesHaltsAtThresholdAndStatusShowsDrift(t *testing.T) {
	f := sshtest.Start(t)
	// Six devices run a kiln-built image; the fleet declares the next version.
	old, oldDrv, err := sshtest.KilnImage(f.Dir, "")
	if err != nil {
		t.Fatal(err)
	}
	newer, newDrv, err := sshtest.KilnImage(f.Dir, "version 2\n")
	if err != nil {
		t.Fatal(err)
	}
	var devs []*sshtest.Device
	var devices strings.Builder
	for i := 0; i < 6; i++ {
		d, err := f.AddDevice(old)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
		fmt.Fprintf(&devices, "[[device]]\nname = %q\nurl = \"ssh://root@%s/dev/mmcblk0\"\ngroup = \"cells\"\n", fmt.Sprintf("cell-%d", i+1), d.Addr)
	}
	// cell-2 is busy (outside its update window); cell-3's new slot fails its health check.
	os.WriteFile(filepath.Join(devs[1].Dir, "run/busy"), nil, 0o644)
	devs[2].SetHealth("exit 1")
	fleetFile := filepath.Join(f.Dir, "fleet.toml")
	os.WriteFile(fleetFile, []byte(fmt.Sprintf(`ssh_key = %q
known_hosts = %q
health = "/usr/bin/health"
window = "test ! -e /run/busy"
parallel = 2
max_failures = 1
waves = [1, 0.5, 1.0]
boot_timeout = "20s"

[[group]]
name = "cells"
image = %q

%s`, f.ClientKey, f.KnownHosts, newer, devices.String())), 0o644)
	fl, err := Load(fleetFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rep, err := fl.Deploy(ctx, helperDir, t.Logf)
	if !errors.Is(err, ErrHalted) || !rep.Halted {
		t.Fatalf("deploy: err = %v, report %+v", err, rep)
	}
	if fmt.Sprint(rep.Waves) != "[1 3 6]" {
		t.Errorf("waves %v, want [1 3 6]", rep.Waves)
	}
	want := []string{Updated, Deferred, Failed, Skipped, Skipped, Skipped}
	for i, r := range rep.Devices {
		if r.Outcome != want[i] {
			t.Errorf("%s: %s (%s), want %s", r.Name, r.Outcome, r.Error, want[i])
		}
	}
	st, err := fl.Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	wantDrift := []bool{false, true, true, true, true, true}
	for i, s := range st {
		if s.Drift != wantDrift[i] || s.Error != "" {
			t.Errorf("%s: drift %v (running %s, declared %s, err %q), want drift %v", s.Name, s.Drift, s.Running, s.Declared, s.Error, wantDrift[i])
		}
		wantRunning := oldDrv
		if !wantDrift[i] {
			wantRunning = newDrv
		}
		if s.Running != wantRunning {
			t.Errorf("%s runs %s, want %s", s.Name, s.Running, wantRunning)
		}
	}
	// Fix the fleet and roll out again: everything converges, the canary is current.
	os.Remove(filepath.Join(devs[1].Dir, "run/busy"))
	devs[2].SetHealth("exit 0")
	rep, err = fl.Deploy(ctx, helperDir, t.Logf)
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	if rep.Devices[0].Outcome != Current {
		t.Errorf("canary: %s, want current", rep.Devices[0].Outcome)
	}
	st, _ = fl.Status(ctx, true)
	for _, s := range st {
		if s.Drift || s.Proof != "match" {
			t.Errorf("%s still drifts: %+v", s.Name, s)
		}
	}
	// A byte changed in one device's running root, behind kiln's back: its
	// kiln.json still claims the declared image, the proof finds it.
	bad := devs[3]
	part, err := os.OpenFile(bad.PartDev(bad.Root()), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	part.WriteAt([]byte("tampered"), 1<<20)
	part.Sync()
	part.Close()
	st, _ = fl.Status(ctx, false)
	if st[3].Drift {
		t.Errorf("without --verify the claim is all there is to read, yet drift: %+v", st[3])
	}
	st, _ = fl.Status(ctx, true)
	for i, s := range st {
		if want := i == 3; s.Drift != want || (s.Proof == "mismatch") != want {
			t.Errorf("%s: drift %v proof %q, want drift %v", s.Name, s.Drift, s.Proof, want)
		}
	}
	// A verifying rollout puts the declared image back on that device only.
	fl.Verify = true
	if rep, err = fl.Deploy(ctx, helperDir, t.Logf); err != nil {
		t.Fatalf("verifying deploy: %v", err)
	}
	for i, r := range rep.Devices {
		if want := map[bool]string{true: Updated, false: Current}[i == 3]; r.Outcome != want {
			t.Errorf("verifying deploy: %s %s, want %s", r.Name, r.Outcome, want)
		}
	}
	st, _ = fl.Status(ctx, true)
	for _, s := range st {
		if s.Drift || s.Proof != "match" {
			t.Errorf("after the verifying deploy %s drifts: %+v", s.Name, s)
		}
	}
	// A hostile device: its disk answers with a GPT that claims four
	// billion entries (checksums correct). That device fails with a clear
	// error; the others finish.
	hostile := devs[4]
	disk, err := os.OpenFile(hostile.Loop, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	disk.WriteAt(hostileGPT(), 0)
	disk.Sync()
	disk.Close()
	fl.MaxFailures = 10
	rep, err = fl.Deploy(ctx, helperDir, t.Logf)
	if err == nil || errors.Is(err, ErrHalted) {
		t.Errorf("deploy with a hostile device: %v", err)
	}
	for i, r := range rep.Devices {
		switch {
		case i == 4 && (r.Outcome != Failed || !strings.Contains(r.Error, "gpt lists 4294967295 entries")):
			t.Errorf("hostile device: %s %q", r.Outcome, r.Error)
		case i != 4 && r.Outcome != Current:
			t.Errorf("%s: %s (%s) beside a hostile device", r.Name, r.Outcome, r.Error)
		}
	}
	st, err = fl.Status(ctx, false)
	if err != nil || st[4].Error == "" || st[3].Error != "" {
		t.Errorf("status beside a hostile device: %v %+v", err, st)
	}
}

// hostileGPT is a protective MBR and a GPT header, checksums correct,
// claiming 0xffffffff partition entries of 128 bytes.
func hostileGPT() []byte {
	b := make([]byte, 1024)
	b[446+4] = 0xee
	binary.LittleEndian.PutUint32(b[446+8:], 1)
	binary.LittleEndian.PutUint32(b[446+12:], 0xffffffff)
	b[510], b[511] = 0x55, 0xaa
	h := b[512:]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x10000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 0xffffffff)
	binary.LittleEndian.PutUint32(h[84:], 128)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}

func TestLoadRejectsBadFleets(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown group": "[[group]]\nname='g'\nimage='x.img'\n[[device]]\nname='d'\nurl='ssh://root@h/dev/mmcblk0'\ngroup='nope'\n",
		"bad url":       "[[group]]\nname='g'\nimage='x.img'\n[[device]]\nname='d'\nurl='http://h'\ngroup='g'\n",
		"bad wave":      "waves=[2.5]\n[[group]]\nname='g'\nimage='x.img'\n",
		"bad toml":      "waves=[\n",
		"unknown key":   "colour='red'\n",
		"duplicate":     "[[group]]\nname='g'\nimage='x.img'\n[[device]]\nname='d'\nurl='ssh://h/dev/x'\ngroup='g'\n[[device]]\nname='d'\nurl='ssh://h/dev/x'\ngroup='g'\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".toml")
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestWavePlan(t *testing.T) {
	for _, c := range []struct {
		waves []any
		n     int
		want  string
	}{
		{[]any{int64(1), 0.5, 1.0}, 6, "[1 3 6]"},
		{[]any{int64(1), 0.25}, 10, "[1 3 10]"},
		{[]any{1.0}, 4, "[4]"},
		{[]any{int64(2), int64(2)}, 3, "[2 3]"},
	} {
		f := &File{Waves: c.waves}
		got, err := f.plan(c.n)
		if err != nil || fmt.Sprint(got) != c.want {
			t.Errorf("plan(%v, %d) = %v, %v; want %s", c.waves, c.n, got, err, c.want)
		}
	}
}

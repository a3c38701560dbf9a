package op_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/op/optest"
	"kiln.dev/kiln/internal/trust"
)

// build writes a build output directory as kiln build does: the ELF and a
// manifest.json naming the board and the ELF's hash.
func build(t *testing.T, board string, arch uint32) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), board)
	os.MkdirAll(dir, 0o755)
	elf := optest.AVRELF(arch, 0, bytes.Repeat([]byte("kiln"), 64))
	if err := os.WriteFile(filepath.Join(dir, "firmware.elf"), elf, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := op.LoadFirmware(filepath.Join(dir, "firmware.elf"), op.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(map[string]any{"board": board, "derivation": strings.Repeat("d", 64),
		"outputs": map[string]any{"firmware.elf": map[string]any{"sha256": a.SHA256, "size": len(elf)}}})
	os.WriteFile(filepath.Join(dir, "manifest.json"), m, 0o644)
	return dir
}

// neverOpen fails the test if a device is opened.
func neverOpen(t *testing.T) func(context.Context, string, *boards.Board, string, device.Options) (device.Session, error) {
	return func(context.Context, string, *boards.Board, string, device.Options) (device.Session, error) {
		t.Error("a device was opened")
		return nil, errors.New("opened")
	}
}

// Firmware built for another board is refused before a device is opened,
// in both directions, whether the board comes from the manifest or from
// the ELF's architecture; with no --board the build's own board is used.
func TestWrongBoardFirmware(t *testing.T) {
	ctx := context.Background()
	mega := build(t, "arduino-mega2560", 6)
	uno := build(t, "arduino-uno", 5)
	for _, c := range []struct {
		name, artifact, board string
		want                  error
		text                  string
	}{
		{"mega build to an uno", mega, "arduino-uno", op.ErrWrongBoard, "built for arduino-mega2560, not arduino-uno"},
		{"uno build to a mega", uno, "arduino-mega2560", op.ErrWrongBoard, "built for arduino-uno, not arduino-mega2560"},
		{"bare avr6 ELF to an uno", filepath.Join(mega, "firmware.elf") + ".bare", "arduino-uno", flash.ErrBadImage, "ELF for avr6, but arduino-uno (atmega328p) is avr5"},
		{"bare avr5 ELF to a mega", filepath.Join(uno, "firmware.elf") + ".bare", "arduino-mega2560", flash.ErrBadImage, "ELF for avr5"},
	} {
		if strings.HasSuffix(c.artifact, ".bare") {
			data, _ := os.ReadFile(strings.TrimSuffix(c.artifact, ".bare"))
			c.artifact = filepath.Join(t.TempDir(), "firmware.elf")
			os.WriteFile(c.artifact, data, 0o644)
		}
		var logged []auditlog.Entry
		rep, err := op.Flash(ctx, op.Request{Artifact: c.artifact, Board: c.board, Port: "emu:" + c.board, Open: neverOpen(t),
			Record: func(e auditlog.Entry) error { logged = append(logged, e); return nil }})
		if !errors.Is(err, c.want) || !errors.Is(err, flash.ErrBadImage) || !strings.Contains(err.Error(), c.text) || rep.Verified {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The Nano is the Uno's chip: an Uno build goes to a Nano.
	rep, err := op.Flash(ctx, op.Request{Artifact: uno, Board: "arduino-nano", Port: "emu:arduino-nano"})
	if err != nil || !rep.Verified {
		t.Errorf("uno build to a nano: %v", err)
	}
	// No --board: the build's own; a Mega build sent to an Uno's port
	// finds no Mega bootloader there (no stk500v2 answer, or the wrong
	// signature) and writes nothing.
	rep, err = op.Flash(ctx, op.Request{Artifact: mega, Port: "emu:arduino-uno", Device: device.Options{Tries: 2}})
	if !(errors.Is(err, flash.ErrWrongDevice) || errors.Is(err, flash.ErrNoAnswer)) || rep.Board != "arduino-mega2560" || rep.Verified {
		t.Errorf("mega build, no --board, uno port: %+v %v", rep, err)
	}
	rep, err = op.Flash(ctx, op.Request{Artifact: uno, Port: "emu:arduino-uno"})
	if err != nil || !rep.Verified || rep.Board != "arduino-uno" || rep.Derivation == "" {
		t.Errorf("uno build, no --board: %+v %v", rep, err)
	}
	// A file with no manifest and no --board: the board is unknown.
	bare := filepath.Join(t.TempDir(), "fw.elf")
	os.WriteFile(bare, optest.AVRELF(5, 0, []byte("x")), 0o644)
	if _, err := op.Flash(ctx, op.Request{Artifact: bare, Port: "emu:arduino-uno", Open: neverOpen(t)}); !errors.Is(err, op.ErrNoBoard) {
		t.Errorf("no board anywhere: %v", err)
	}
	// A manifest that does not list the file's hash says nothing about it.
	edited := build(t, "arduino-mega2560", 5)
	os.WriteFile(filepath.Join(edited, "firmware.elf"), optest.AVRELF(5, 0, []byte("edited")), 0o644)
	if a, err := op.LoadFirmware(edited, op.LoadOptions{}); err != nil || a.Board != "" {
		t.Errorf("manifest not listing the file: board %q %v", a.Board, err)
	}
}

// The bytes checked are the bytes written: a file swapped after the trust
// gate (here: while the device opens) does not reach the device.
func TestSwapAfterCheck(t *testing.T) {
	key, err := trust.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := trust.ParsePolicy([]byte("[[key]]\nname = \"k\"\npublic_key = \""+key.Public().String()+"\"\n[default]\nrequire_signature = true\n"), "policy")
	if err != nil {
		t.Fatal(err)
	}
	dir := build(t, "arduino-uno", 5)
	elf := filepath.Join(dir, "firmware.elf")
	data, _ := os.ReadFile(elf)
	sig, _, err := trust.SignArtifact(key, bytes.NewReader(data), "firmware.elf", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(elf+".minisig", sig.Encode(), 0o644)
	want, _ := flash.Parse(elf, data, flash.LoadOptions{})
	evil := optest.AVRELF(5, 0, bytes.Repeat([]byte("evil"), 64))
	rep, err := op.Flash(context.Background(), op.Request{Artifact: dir, Port: "emu:arduino-uno", Policy: pol,
		Open: func(ctx context.Context, spec string, b *boards.Board, p string, o device.Options) (device.Session, error) {
			os.WriteFile(elf, evil, 0o644) // the swap, after the check
			return device.Open(ctx, spec, b, p, o)
		}})
	if err != nil || !rep.Verified || rep.DeviceSHA256 != want.SHA256() || rep.Trust == nil || !rep.Trust.Signed {
		t.Fatalf("swap after check: %+v %v", rep, err)
	}
	// The swapped file itself is refused.
	if _, err := op.Flash(context.Background(), op.Request{Artifact: dir, Board: "arduino-uno", Port: "emu:arduino-uno", Policy: pol}); !errors.Is(err, op.ErrUntrusted) {
		t.Fatalf("swapped file: %v", err)
	}
}

// A disk image is copied once into a private directory: what is hashed,
// checked and written is that copy, whatever happens to the file after.
func TestDiskPrivateCopy(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "robot.img")
	os.WriteFile(img, bytes.Repeat([]byte{1}, 4096), 0o644)
	a, err := op.LoadDisk(img, op.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(img, bytes.Repeat([]byte{2}, 4096), 0o644)
	got, err := os.ReadFile(a.DiskPath())
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{1}, 4096)) || a.DiskSize != 4096 {
		t.Fatalf("private copy changed with the file: %v", err)
	}
	if st, _ := os.Stat(filepath.Dir(a.DiskPath())); st.Mode().Perm() != 0o700 {
		t.Errorf("private dir mode %v", st.Mode())
	}
	a.Close()
	if _, err := os.Stat(a.DiskPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("copy left behind: %v", err)
	}
}

// Under a policy that requires signatures for rpi-* boards, an image whose
// board cannot be established (no kiln.json, no --board) is treated as an
// rpi-* image: refused before any connection, on every ssh path.
func TestDiskPolicyWithoutBoard(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	pol, err := trust.ParsePolicy([]byte("[[key]]\nname = \"k\"\npublic_key = \""+key.Public().String()+"\"\n[[rule]]\nboards = [\"rpi-*\"]\nrequire_signature = true\n"), "policy")
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "robot.img")
	os.WriteFile(img, bytes.Repeat([]byte{1}, 64<<10), 0o644)
	dial := func(ssh.Addr, ssh.Options) ssh.Dialer {
		return func(context.Context) (ssh.RunCloser, error) {
			t.Error("connected to the device")
			return nil, errors.New("dialled")
		}
	}
	var logged []auditlog.Entry
	rec := func(e auditlog.Entry) error { logged = append(logged, e); return nil }
	for _, f := range []func(context.Context, op.Request) (*op.Report, error){op.Flash, op.Update} {
		port := "ssh://root@robot-1/dev/sda"
		rep, err := f(context.Background(), op.Request{Artifact: img, Port: port, Policy: pol, Record: rec, Disk: op.DiskOptions{Dialer: dial}})
		if !errors.Is(err, op.ErrUntrusted) || rep.Verified {
			t.Errorf("%s: %v", rep.Op, err)
		}
	}
	if len(logged) != 2 || logged[0].Result != "untrusted" || logged[1].Kind != auditlog.KindUpdate {
		t.Errorf("audit records: %+v", logged)
	}
}

// An image's kiln.json names its board: flashed as another board, it is
// refused before any connection.
func TestWrongBoardImage(t *testing.T) {
	for _, tool := range []string{"sfdisk", "mkfs.vfat", "mcopy", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (the Makefile's DEB_PACKAGES installs it)", tool)
		}
	}
	img, err := sshtest.BuildImage(t.TempDir(), sshtest.ImageSpec{Derivation: "wrong-board", RootSize: 1 << 20, Payload: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	a, err := op.LoadDisk(img, op.LoadOptions{})
	if err != nil || a.Board != "rpi-3b" {
		t.Fatalf("kiln.json board: %q %v", a.Board, err)
	}
	a.Close()
	dial := func(ssh.Addr, ssh.Options) ssh.Dialer {
		return func(context.Context) (ssh.RunCloser, error) {
			t.Error("connected to the device")
			return nil, errors.New("dialled")
		}
	}
	for _, f := range []func(context.Context, op.Request) (*op.Report, error){op.Flash, op.Update} {
		rep, err := f(context.Background(), op.Request{Artifact: img, Board: "rpi-4b", Port: "ssh://root@pi/dev/mmcblk0", Disk: op.DiskOptions{Dialer: dial}})
		if !errors.Is(err, op.ErrWrongBoard) || !strings.Contains(err.Error(), "built for rpi-3b, not rpi-4b") {
			t.Errorf("%s: %v", rep.Op, err)
		}
	}
}

// An A/B image whose mechanism the board's firmware lacks (U-Boot's
// environment on a Pi 4B) is refused by kiln update before any connection,
// with the reason.
func TestUpdateRefusesABTheBoardLacks(t *testing.T) {
	for _, tool := range []string{"sfdisk", "mkfs.vfat", "mcopy", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (the Makefile's DEB_PACKAGES installs it)", tool)
		}
	}
	img, err := sshtest.BuildImage(t.TempDir(), sshtest.ImageSpec{Derivation: "uboot-on-pi4", RootSize: 1 << 20, Payload: 64 << 10, Board: "rpi-4b", AB: "uboot-env"})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(ssh.Addr, ssh.Options) ssh.Dialer {
		return func(context.Context) (ssh.RunCloser, error) {
			t.Error("connected to the device")
			return nil, errors.New("dialled")
		}
	}
	_, err = op.Update(context.Background(), op.Request{Artifact: img, Port: "ssh://root@pi/dev/mmcblk0", Disk: op.DiskOptions{Dialer: dial}})
	if !errors.Is(err, boards.ErrNoABMechanism) || !errors.Is(err, flash.ErrBadImage) || !strings.Contains(err.Error(), `"uboot-env" (it has tryboot)`) {
		t.Errorf("update: %v", err)
	}
}

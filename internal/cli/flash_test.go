package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.bug.st/serial/enumerator"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/serialport"
	"kiln.dev/kiln/internal/op"
)

// writeHex writes data at addr as Intel HEX (with extended linear address
// records past 64 KiB) and returns the path.
func writeHex(t testing.TB, dir, name string, addr uint32, data []byte) string {
	t.Helper()
	var b strings.Builder
	rec := func(typ byte, a uint16, payload []byte) {
		sum := byte(len(payload)) + byte(a>>8) + byte(a) + typ
		fmt.Fprintf(&b, ":%02X%04X%02X", len(payload), a, typ)
		for _, c := range payload {
			fmt.Fprintf(&b, "%02X", c)
			sum += c
		}
		fmt.Fprintf(&b, "%02X\n", byte(-sum))
	}
	upper := uint32(0)
	for off := 0; off < len(data); off += 16 {
		a := addr + uint32(off)
		if a>>16 != upper {
			upper = a >> 16
			rec(4, 0, []byte{byte(upper >> 8), byte(upper)})
		}
		rec(0, uint16(a), data[off:min(off+16, len(data))])
	}
	rec(1, 0, nil)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// emulator is a running `kiln emulate`.
type emulator struct {
	cmd    *exec.Cmd
	port   string
	stderr *bytes.Buffer
}

// startEmulate runs the real binary: kiln emulate BOARD --state FILE, and
// reads the port from its first line.
func startEmulate(t testing.TB, board, state string) *emulator {
	t.Helper()
	return startEmulator(t, exec.Command(kilnBin, "emulate", board, "--state", state))
}

// startEmulateCmd starts a kiln emulate command and returns its port.
func startEmulateCmd(t testing.TB, cmd *exec.Cmd) string {
	return startEmulator(t, cmd).port
}

func startEmulator(t testing.TB, cmd *exec.Cmd) *emulator {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	e := &emulator{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = e.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("kiln emulate: no first line: %v (stderr: %s)", err, e.stderr)
	}
	m := regexp.MustCompile(`^port: (/dev/pts/[0-9]+)\n$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("kiln emulate: first line %q, want \"port: /dev/pts/N\"", line)
	}
	e.port = m[1]
	go io.Copy(io.Discard, out)
	return e
}

// stop sends SIGTERM and wants a clean exit.
func (e *emulator) stop(t *testing.T) {
	t.Helper()
	e.cmd.Process.Signal(syscall.SIGTERM)
	if err := e.cmd.Wait(); err != nil {
		t.Errorf("kiln emulate exited with %v; stderr: %s", err, e.stderr)
	}
}

// waitState polls the state file until it equals want.
func waitState(t *testing.T, path string, want []byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := os.ReadFile(path)
		if err == nil && bytes.Equal(got[:min(len(got), len(want))], want) && len(got) >= len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s (%d bytes, err %v) never held the %d-byte image", path, len(got), err, len(want))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed (make deps installs it): %v", name, err)
	}
}

// Must-show 1: avrdude -c arduino writes and verifies a full 32256-byte
// application through kiln's Optiboot emulator on a pty; then kiln itself
// flashes the same pty through go.bug.st/serial.
func TestAvrdudeArduinoThroughEmulatorPTY(t *testing.T) {
	needTool(t, "avrdude")
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "uno.state")
	emu := startEmulate(t, "arduino-uno", state)
	img := randomBytes(328, 32256)
	hex := writeHex(t, dir, "img.hex", 0, img)
	out, err := exec.Command("avrdude", "-c", "arduino", "-p", "m328p", "-P", emu.port, "-b", "115200",
		"-U", "flash:w:"+hex+":i").CombinedOutput()
	if err != nil {
		t.Fatalf("avrdude: %v\n%s\nemulator: %s", err, out, emu.stderr)
	}
	if !strings.Contains(string(out), "32256 bytes of flash verified") {
		t.Fatalf("avrdude did not verify:\n%s", out)
	}
	waitState(t, state, img)

	// kiln through the real pty (go.bug.st/serial), --json.
	img2 := randomBytes(329, 20000)
	hex2 := writeHex(t, dir, "img2.hex", 0, img2)
	cmd := exec.Command(kilnBin, "flash", "--board", "arduino-uno", "--port", emu.port, "--json", hex2)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	js, err := cmd.Output()
	if err != nil {
		t.Fatalf("kiln flash: %v\n%s", err, stderr.String())
	}
	var rep op.Report
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatalf("kiln flash --json: %v\n%s", err, js)
	}
	if !rep.Verified || rep.DeviceSHA256 != rep.ImageSHA256 || rep.Bytes != 20000 || rep.Port != emu.port {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(stderr.String(), "no modem lines") {
		t.Errorf("no note about the pty's missing modem lines: %s", stderr.String())
	}
	// Optiboot erased and rewrote only the pages the image touches.
	want := append(append([]byte(nil), img2...), img[20000:]...)
	for i := 20000; i < 20096; i++ { // the rest of the last touched page is erased
		want[i] = 0xFF
	}
	waitState(t, state, want)
	emu.stop(t)
	got, _ := os.ReadFile(state)
	if !bytes.Equal(got, want) {
		t.Fatal("state after exit differs")
	}
}

// Must-show 1: avrdude -c wiring writes and verifies through kiln's Mega
// 2560 emulator. The image crosses 128 KiB, where load addresses need
// bit 31. -D because the real Mega bootloader answers chip erase with
// STATUS_CMD_FAILED (Arduino issue 543; the Arduino IDE passes -D too).
func TestAvrdudeWiringThroughEmulatorPTY(t *testing.T) {
	needTool(t, "avrdude")
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "mega.state")
	emu := startEmulate(t, "arduino-mega2560", state)
	img := randomBytes(2560, 160*1024)
	hex := writeHex(t, dir, "img.hex", 0, img)
	out, err := exec.Command("avrdude", "-c", "wiring", "-p", "m2560", "-P", emu.port, "-b", "115200", "-D",
		"-U", "flash:w:"+hex+":i").CombinedOutput()
	if err != nil {
		t.Fatalf("avrdude: %v\n%s\nemulator: %s", err, out, emu.stderr)
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d bytes of flash verified", len(img))) {
		t.Fatalf("avrdude did not verify:\n%s", out)
	}
	waitState(t, state, img)
	// Without -D avrdude stops at the chip erase the bootloader refuses,
	// as it does with a real Mega.
	out, err = exec.Command("avrdude", "-c", "wiring", "-p", "m2560", "-P", emu.port, "-b", "115200",
		"-U", "flash:w:"+hex+":i").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "erasing chip") {
		t.Errorf("avrdude without -D: err %v\n%s", err, out)
	}
	emu.stop(t)
}

// Must-show 3, CLI level: kiln flash to an in-process emulator, the whole
// command path, with --json; verify against a fresh (erased) emulator is a
// mismatch: exit 3.
func TestFlashEmuEndToEnd(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ board string }{{"arduino-uno"}, {"arduino-nano"}, {"arduino-mega2560"}} {
		img := randomBytes(int64(len(c.board)), 5000)
		hex := writeHex(t, dir, c.board+".hex", 0x100, img)
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), []string{"kiln", "flash", "--board", c.board, "--port", "emu:" + c.board, "--json", hex}, nil, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", c.board, code, stderr.String())
		}
		var rep op.Report
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatal(err)
		}
		if !rep.Verified || rep.ImageSHA256 != rep.DeviceSHA256 || rep.Board != c.board || !strings.Contains(rep.Device, "avr signature") {
			t.Fatalf("%s: %+v", c.board, rep)
		}
		stdout.Reset()
		stderr.Reset()
		code = Main(context.Background(), []string{"kiln", "flash", "--board", c.board, "--port", "emu:" + c.board, hex}, nil, &stdout, &stderr)
		if code != 0 || !strings.Contains(stdout.String(), "verified: sha256 "+rep.ImageSHA256) {
			t.Fatalf("%s: exit %d: %s %s", c.board, code, stdout.String(), stderr.String())
		}
		stdout.Reset()
		stderr.Reset()
		code = Main(context.Background(), []string{"kiln", "verify", "--board", c.board, "--port", "emu:" + c.board, hex}, nil, &stdout, &stderr)
		if code != ExitVerify || !strings.Contains(stderr.String(), "verification failed") {
			t.Fatalf("%s: verify of an erased device: exit %d: %s", c.board, code, stderr.String())
		}
	}
}

// A board that answers another protocol: a clear diagnosis, exit 1.
func TestFlashNoAnswerDiagnosis(t *testing.T) {
	dir := t.TempDir()
	hex := writeHex(t, dir, "a.hex", 0, randomBytes(1, 300))
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", "emu:arduino-mega2560", hex}, nil, &stdout, &stderr)
	if code != ExitFailure {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"kiln: stk500: no answer from bootloader after 10 tries", "hint: is the board in bootloader mode?", "hint: is the baud rate right (--baud)?"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// Must-show 4: bad inputs fail before the port is opened: the port does not
// exist, and openDevice is never called.
func TestBadInputsRefusedBeforePortOpens(t *testing.T) {
	dir := t.TempDir()
	opens := 0
	orig := openDevice
	openDevice = func(ctx context.Context, spec string, b *boards.Board, protocol string, opts device.Options) (device.Session, error) {
		opens++
		return orig(ctx, spec, b, protocol, opts)
	}
	t.Cleanup(func() { openDevice = orig })

	good := writeHex(t, dir, "good.hex", 0, randomBytes(5, 64))
	data, _ := os.ReadFile(good)
	lines := strings.Split(string(data), "\n")
	l := []byte(lines[1])
	l[len(l)-1] ^= 1 // second record: wrong checksum digit
	lines[1] = string(l)
	badSum := filepath.Join(dir, "badsum.hex")
	os.WriteFile(badSum, []byte(strings.Join(lines, "\n")), 0o644)

	empty := filepath.Join(dir, "empty.hex")
	os.WriteFile(empty, []byte(":00000001FF\n"), 0o644)
	emptyBin := filepath.Join(dir, "empty.bin")
	os.WriteFile(emptyBin, nil, 0o644)

	needTool(t, "arm-none-eabi-gcc")
	src := filepath.Join(dir, "arm.c")
	os.WriteFile(src, []byte("void _start(void) { for (;;) ; }\nint table[4] = {1, 2, 3, 4};\n"), 0o644)
	armELF := filepath.Join(dir, "arm.elf")
	if out, err := exec.Command("arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-Os", "-o", armELF, src).CombinedOutput(); err != nil {
		t.Fatalf("arm-none-eabi-gcc: %v\n%s", err, out)
	}
	debianOptiboot := "/usr/share/arduino/hardware/arduino/avr/bootloaders/optiboot/optiboot_atmega328.hex"
	if _, err := os.Stat(debianOptiboot); err != nil {
		t.Fatalf("%v (arduino-core-avr ships it; make deps installs it)", err)
	}

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"bad checksum", []string{badSum}, "badsum.hex:2: checksum"},
		// Its code runs from 0x7E00 to 0x8014, past the end of flash, and its
		// version word at 0x7FFE overlaps that code: the loader refuses it.
		{"debian optiboot", []string{debianOptiboot}, "optiboot_atmega328.hex: data error: data segments overlap at line 35"},
		{"arm elf to avr", []string{armELF}, "ELF for EM_ARM"},
		{"empty hex", []string{empty}, "the image is empty"},
		{"empty bin", []string{"--address", "0", emptyBin}, "the image is empty"},
		{"past flash", []string{writeHex(t, dir, "big.hex", 0, randomBytes(6, 32257))}, "overlaps the bootloader"},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		args := append([]string{"kiln", "flash", "--board", "arduino-uno", "--port", "/dev/kiln-test-no-such-port"}, c.args...)
		code := Main(context.Background(), args, nil, &stdout, &stderr)
		if code != ExitFailure || !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "hint: nothing was written") {
			t.Errorf("%s: exit %d, stderr:\n%s", c.name, code, stderr.String())
		}
		if strings.Contains(stderr.String(), "kiln-test-no-such-port") {
			t.Errorf("%s: the port was touched: %s", c.name, stderr.String())
		}
	}
	if opens != 0 {
		t.Fatalf("the port was opened %d times", opens)
	}
	// The same good image does reach the port (and fails there): the
	// counter sees opens.
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", "/dev/kiln-test-no-such-port", good}, nil, &stdout, &stderr)
	if code != ExitFailure || opens != 1 || !strings.Contains(stderr.String(), "no such port") {
		t.Fatalf("good image: exit %d, opens %d: %s", code, opens, stderr.String())
	}
}

// kiln emulate --state loads the flash it saved; kiln verify reads it back
// through the pty without writing, and says so in one JSON object.
func TestVerifyThroughPTYAgainstLoadedState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "uno.state")
	img := randomBytes(77, 32256)
	if err := os.WriteFile(state, img, 0o644); err != nil {
		t.Fatal(err)
	}
	emu := startEmulate(t, "arduino-uno", state)
	hex := writeHex(t, dir, "img.hex", 0, img[:9000])
	out, err := exec.Command(kilnBin, "verify", "--board", "arduino-uno", "--port", emu.port, "--json", hex).Output()
	if err != nil {
		t.Fatalf("kiln verify: %v\n%s", err, out)
	}
	var rep op.Report
	if err := json.Unmarshal(out, &rep); err != nil || !rep.Verified || rep.WriteSec != 0 {
		t.Fatalf("%v %+v", err, rep)
	}
	orig := append([]byte(nil), img...)
	img[100] ^= 0xFF
	hex = writeHex(t, dir, "other.hex", 0, img[:9000])
	cmd := exec.Command(kilnBin, "verify", "--board", "arduino-uno", "--port", emu.port, "--json", hex)
	out, err = cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitVerify {
		t.Fatalf("verify of a different image: %v", err)
	}
	rep = op.Report{}
	if err := json.Unmarshal(out, &rep); err != nil || rep.Verified || !strings.Contains(rep.Error, "first difference at 0x64") {
		t.Fatalf("%v %+v", err, rep)
	}
	emu.stop(t)
	if got, _ := os.ReadFile(state); !bytes.Equal(got, orig) {
		t.Fatal("verify changed the device")
	}
}

// --port auto and usb:SERIAL find the board by its USB ids (the enumerator
// is faked to list kiln emulate's pty as an Uno's USB serial port), then
// flash through go.bug.st/serial.
func TestFlashPortAuto(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "uno.state")
	emu := startEmulate(t, "arduino-uno", state)
	orig := serialport.ListPorts
	t.Cleanup(func() { serialport.ListPorts = orig })
	ports := []*enumerator.PortDetails{{Name: emu.port, IsUSB: true, VID: "2341", PID: "0043", SerialNumber: "KILN0001"}}
	serialport.ListPorts = func() ([]*enumerator.PortDetails, error) { return ports, nil }

	img := randomBytes(43, 3000)
	hex := writeHex(t, dir, "img.hex", 0, img)
	for _, port := range []string{"auto", "usb:KILN0001"} {
		var stdout, stderr bytes.Buffer
		if code := Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", port, hex}, nil, &stdout, &stderr); code != 0 {
			t.Fatalf("--port %s: exit %d: %s", port, code, stderr.String())
		}
		waitState(t, state, img)
	}
	// A second Uno-like adapter: auto refuses to guess.
	ports = append(ports, &enumerator.PortDetails{Name: "/dev/ttyUSB7", IsUSB: true, VID: "1a86", PID: "7523", SerialNumber: "CH340X"})
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", "auto", hex}, nil, &stdout, &stderr)
	if code != ExitFailure || !strings.Contains(stderr.String(), "2 ports could be arduino-uno") || !strings.Contains(stderr.String(), "KILN0001") {
		t.Fatalf("two candidates: exit %d: %s", code, stderr.String())
	}
	ports = nil
	stderr.Reset()
	code = Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", "auto", hex}, nil, &stdout, &stderr)
	if code != ExitFailure || !strings.Contains(stderr.String(), "no USB serial port with arduino-uno's ids") || !strings.Contains(stderr.String(), "hint: is the board plugged in?") {
		t.Fatalf("no candidate: exit %d: %s", code, stderr.String())
	}
	emu.stop(t)
}

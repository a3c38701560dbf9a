package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu/dfutest"
	"kiln.dev/kiln/internal/cli"
)

// TestMain doubles as the kiln command for TestCLIThroughLibusb: with
// KILN_E2E_ARGS set it runs cli.Main with those arguments in this fresh
// process (where LD_PRELOAD has put the libusb stand-in under gousb) and
// exits with its code.
func TestMain(m *testing.M) {
	if a := os.Getenv("KILN_E2E_ARGS"); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(99)
		}
		os.Exit(cli.Main(context.Background(), append([]string{"kiln"}, args...), os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestCLIThroughLibusb runs kiln flash and kiln verify with --port dfu:
// through the whole real path — cli, device, dfu.Open, gousb, the libusb
// API — against the DfuSe model, which a libusb stand-in (LD_PRELOAD)
// presents as a USB device: enumeration, descriptors, alternate settings,
// control transfers and stalls all cross the gousb adapter.
func TestCLIThroughLibusb(t *testing.T) {
	b, _ := boards.Get("nucleo-f401re")
	dev, err := dfutest.ForBoard(b)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	so, err := dfutest.BuildShim(dir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usb.sock")
	stop, err := dev.ListenUSB(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	kilnUSB := func(args ...string) (int, string, string) {
		a, _ := json.Marshal(args)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KILN_E2E_ARGS="+string(a), "LD_PRELOAD="+so, "KILN_USB_SHIM="+sock)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}

	data := bytes.Repeat([]byte("kiln over libusb "), 9000) // 153 KB: 16K, 64K and 128K sectors
	img, _ := flash.NewImage("fw", flash.Segment{Addr: 0x08000000, Data: data})
	fw := filepath.Join(dir, "fw.dfu")
	os.WriteFile(fw, flash.EncodeDfuSe(img, 0x0483, 0xdf11), 0o644)

	code, stdout, stderr := kilnUSB("flash", "--board", "nucleo-f401re", "--port", "dfu:0483:df11,serial=EMUSTM32F401RE", fw)
	if code != 0 || !strings.Contains(stdout, "verified: sha256 "+img.SHA256()) || !strings.Contains(stdout, "dfu 0483:df11 serial=EMUSTM32F401RE") {
		t.Fatalf("kiln flash --port dfu:: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if got, _ := dev.Memory(0x08000000, len(data)); !bytes.Equal(got, data) {
		t.Fatal("kiln reported a verified flash but the device holds other bytes")
	}
	if left, at := dev.Left(); !left || at != 0x08000000 {
		t.Fatalf("after a proven flash the device should start the program: left=%v at %#x", left, at)
	}
	st := dev.Stats()
	if st.SetAlts == 0 || st.Requests[3] == 0 || len(st.Erased) != 6 {
		t.Errorf("stats %+v", st)
	}
	t.Logf("%s", strings.TrimSpace(stdout))

	// kiln verify reads only; then a changed byte is exit 3.
	dev.Reset()
	code, stdout, stderr = kilnUSB("verify", "--board", "nucleo-f401re", "--port", "dfu:", fw)
	if code != 0 || !strings.Contains(stdout, "verified: sha256 "+img.SHA256()) {
		t.Fatalf("kiln verify: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if left, _ := dev.Left(); left {
		t.Error("kiln verify started the program")
	}
	if dev.Stats().BytesWritten != st.BytesWritten {
		t.Error("kiln verify wrote")
	}
	dev.Fill(0x08012345, []byte{0x00})
	code, _, stderr = kilnUSB("verify", "--board", "nucleo-f401re", "--port", "dfu:", fw)
	if code != 3 || !strings.Contains(stderr, "first difference at 0x8012345") {
		t.Fatalf("verify of a changed device: exit %d\n%s", code, stderr)
	}

	// Selection: another serial number is no device.
	code, _, stderr = kilnUSB("verify", "--board", "nucleo-f401re", "--port", "dfu:0483:df11,serial=OTHER", fw)
	if code != 1 || !strings.Contains(stderr, "no DFU device found matching 0483:df11,serial=OTHER") {
		t.Fatalf("wrong serial: exit %d\n%s", code, stderr)
	}

	// Stalls and errWRITE on the USB path are recovered like on the model.
	dev.Reset()
	dev.SetFaults(dfutest.Faults{Rand: newRand(5), Stall: 0.02, WriteError: 0.05, Max: 6})
	code, stdout, stderr = kilnUSB("flash", "--board", "nucleo-f401re", "--port", "dfu:", fw)
	if code != 0 || dev.Stats().Stalls == 0 {
		t.Fatalf("flash with faults: exit %d, %d stalls\n%s\n%s", code, dev.Stats().Stalls, stdout, stderr)
	}
	if got, _ := dev.Memory(0x08000000, len(data)); !bytes.Equal(got, data) {
		t.Fatal("flash with faults: wrong content")
	}
}

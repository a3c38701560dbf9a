package dfutest

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// dfuUtil runs Debian's dfu-util against the model through the libusb shim.
func dfuUtil(t *testing.T, d *Device) func(args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("dfu-util"); err != nil {
		t.Fatal("dfu-util is missing: the Makefile installs it (make deps)")
	}
	dir := t.TempDir()
	so, err := BuildShim(dir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usb.sock")
	stop, err := d.ListenUSB(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return func(args ...string) (string, error) {
		cmd := exec.Command("dfu-util", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+so, "KILN_USB_SHIM="+sock)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// TestDfuUtilAgrees: dfu-util 0.11, ST's DfuSe host side as most people
// use it, lists the model, writes an image across 16K, 64K and 128K
// sectors (erasing the pages it touches itself), reads it back and leaves
// DFU mode, and the model's flash holds the image.
func TestDfuUtilAgrees(t *testing.T) {
	b, _ := boards.Get("nucleo-f401re")
	d, err := ForBoard(b)
	if err != nil {
		t.Fatal(err)
	}
	run := dfuUtil(t, d)

	out, err := run("-l")
	if err != nil || !strings.Contains(out, "Found DFU: [0483:df11]") || !strings.Contains(out, `name="@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg"`) ||
		!strings.Contains(out, `serial="EMUSTM32F401RE"`) || !strings.Contains(out, `alt=3, name="@Device Feature/0xFFFF0000/01*004 e"`) {
		t.Fatalf("dfu-util -l: %v\n%s", err, out)
	}

	img := make([]byte, 0x22000)
	r := rand.New(rand.NewPCG(11, 22))
	for i := range img {
		img[i] = byte(r.UintN(256))
	}
	const addr = 0x0800f000
	fw := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(fw, img, 0o644)
	out, err = run("-a", "0", "-s", "0x0800f000", "-D", fw)
	if err != nil {
		t.Fatalf("dfu-util -D: %v\n%s", err, out)
	}
	got, _ := d.Memory(addr, len(img))
	if !bytes.Equal(got, img) {
		t.Fatalf("after dfu-util -D the model holds other bytes\n%s", out)
	}
	st := d.Stats()
	want := []uint32{0x0800c000, 0x08010000, 0x08020000}
	if len(st.Erased) != 3 || st.Erased[0] != want[0] || st.Erased[1] != want[1] || st.Erased[2] != want[2] {
		t.Errorf("dfu-util erased %#x, want %#x", st.Erased, want)
	}

	up := filepath.Join(t.TempDir(), "up.bin")
	out, err = run("-a", "0", "-s", "0x0800f000:0x22000", "-U", up)
	if err != nil {
		t.Fatalf("dfu-util -U: %v\n%s", err, out)
	}
	if read, _ := os.ReadFile(up); !bytes.Equal(read, img) {
		t.Fatalf("dfu-util -U read %d bytes that differ from the image\n%s", len(read), out)
	}

	// A DfuSe file made by kiln's encoder: dfu-util checks its suffix and
	// CRC, reads its prefix, target and elements, and writes them.
	img2, _ := flash.NewImage("fw", flash.Segment{Addr: 0x08000000, Data: img[:5000]}, flash.Segment{Addr: 0x08020000, Data: img[5000:9000]})
	dfuFile := filepath.Join(t.TempDir(), "fw.dfu")
	os.WriteFile(dfuFile, flash.EncodeDfuSe(img2, 0x0483, 0xdf11), 0o644)
	out, err = run("-a", "0", "-D", dfuFile)
	if err != nil || strings.Contains(out, "Warning") {
		t.Fatalf("dfu-util -D kiln's .dfu: %v\n%s", err, out)
	}
	for _, s := range img2.Segments {
		if got, _ := d.Memory(s.Addr, len(s.Data)); !bytes.Equal(got, s.Data) {
			t.Fatalf("dfu-util wrote kiln's .dfu element at %#x wrongly\n%s", s.Addr, out)
		}
	}

	out, err = run("-a", "0", "-s", "0x08000000:leave")
	if left, at := d.Left(); !left || at != 0x08000000 {
		t.Fatalf("dfu-util :leave: left=%v at %#x (%v)\n%s", left, at, err, out)
	}
	t.Logf("dfu-util wrote, read and left: %d transfers, %d stalls", d.Stats().Transfers, d.Stats().Stalls)
}

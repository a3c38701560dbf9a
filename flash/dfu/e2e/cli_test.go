package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/cli"
)

func kiln(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = cli.Main(context.Background(), append([]string{"kiln"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestCLINoDFUDevice runs kiln flash through the real libusb path on a
// machine with no DFU device: one clear error line, exit 1.
func TestCLINoDFUDevice(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "some.bin")
	os.WriteFile(bin, bytes.Repeat([]byte{0x42}, 4096), 0o644)
	for _, port := range []string{"dfu:", "dfu:0483:df11", "dfu:0483:df11,serial=X1"} {
		code, _, stderr := kiln(t, "flash", "--board", "nucleo-f401re", "--port", port, bin, "--address", "0x08000000")
		if code != 1 || !strings.HasPrefix(stderr, "kiln: dfu: no DFU device found") {
			t.Fatalf("--port %s: exit %d, stderr %q; want exit 1 and \"no DFU device found\"", port, code, stderr)
		}
		t.Logf("--port %s: %s", port, strings.TrimSpace(stderr))
	}
}

// TestCLIEmulatedDfuSe flashes a .dfu file to emu:nucleo-f401re (the DfuSe
// model behind the same dfu.Target as a USB device) and checks the printed
// proof.
func TestCLIEmulatedDfuSe(t *testing.T) {
	dir := t.TempDir()
	img, _ := flash.NewImage("fw", flash.Segment{Addr: 0x08000000, Data: bytes.Repeat([]byte("kiln dfu "), 12000)})
	f := filepath.Join(dir, "fw.dfu")
	os.WriteFile(f, flash.EncodeDfuSe(img, 0x0483, 0xdf11), 0o644)
	code, stdout, stderr := kiln(t, "flash", "--board", "nucleo-f401re", "--port", "emu:nucleo-f401re", f)
	if code != 0 || !strings.Contains(stdout, "verified: sha256 "+img.SHA256()) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	code, stdout, _ = kiln(t, "flash", "--json", "--board", "nucleo-f401re", "--port", "emu:nucleo-f401re", f)
	var rep struct {
		Verified     bool   `json:"verified"`
		DeviceSHA256 string `json:"device_sha256"`
		Protocol     string `json:"protocol"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 0 || !rep.Verified || rep.DeviceSHA256 != img.SHA256() || rep.Protocol != "dfuse" {
		t.Fatalf("--json: exit %d, %+v, %v\n%s", code, rep, err, stdout)
	}
	// A fresh emulated device holds another program: verify reads it, exit 3.
	code, _, stderr = kiln(t, "verify", "--board", "nucleo-f401re", "--port", "emu:nucleo-f401re", f)
	if code != 3 || !strings.Contains(stderr, "verification failed") {
		t.Fatalf("verify of a device holding other bytes: exit %d, %s", code, stderr)
	}
}

// TestCLIBadDfuInputs: a damaged .dfu and an image outside the flash are
// refused before the port is opened.
func TestCLIBadDfuInputs(t *testing.T) {
	dir := t.TempDir()
	img, _ := flash.NewImage("fw", flash.Segment{Addr: 0x08000000, Data: bytes.Repeat([]byte{7}, 5000)})
	data := flash.EncodeDfuSe(img, 0x0483, 0xdf11)
	data[400] ^= 0x10
	bad := filepath.Join(dir, "bad.dfu")
	os.WriteFile(bad, data, 0o644)
	out, _ := flash.NewImage("fw", flash.Segment{Addr: 0x0807f000, Data: bytes.Repeat([]byte{7}, 0x2000)})
	outside := filepath.Join(dir, "outside.dfu")
	os.WriteFile(outside, flash.EncodeDfuSe(out, 0x0483, 0xdf11), 0o644)
	for _, tc := range []struct{ file, want string }{{bad, "CRC"}, {outside, "outside"}} {
		code, _, stderr := kiln(t, "flash", "--board", "nucleo-f401re", "--port", "dfu:", tc.file)
		if code != 1 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "no DFU device") {
			t.Errorf("%s: exit %d, %s; want exit 1 saying %q before any device is looked for", tc.file, code, stderr, tc.want)
		}
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestFlashSWD drives kiln flash and verify through the swd back end: the
// probe and chip models with --protocol swd --port emu:BOARD, with the JSON
// report naming the chip's unique ID and the probe; and the real USB path on
// this machine, which has no probe.
func TestFlashSWD(t *testing.T) {
	dir := t.TempDir()
	hex := writeHex(t, dir, "fw.hex", 0x08000000, randomBytes(3, 6000))
	code, out, errOut := kiln(t, "flash", "--board", "bluepill", "--protocol", "swd", "--port", "emu:bluepill", "--json", hex)
	if code != 0 {
		t.Fatalf("flash: exit %d: %s %s", code, out, errOut)
	}
	var rep struct {
		Protocol string `json:"protocol"`
		Device   string `json:"device"`
		Verified bool   `json:"verified"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.Verified || rep.Protocol != "swd" || !strings.Contains(rep.Device, "UID ") {
		t.Fatalf("report %s (%v): want verified over swd naming the chip's UID", out, err)
	}
	// Another chip behind the probe: refused before anything is written.
	code, _, errOut = kiln(t, "flash", "--board", "bluepill", "--protocol", "swd", "--port", "emu:nucleo-f401re", hex)
	if code == 0 || !strings.Contains(errOut, "not the board's") {
		t.Fatalf("another chip: exit %d: %s", code, errOut)
	}
	// swd: on a board whose default is another protocol picks swd by the
	// port; with no probe on this machine it says so, exit 1.
	code, _, errOut = kiln(t, "flash", "--board", "nucleo-f401re", "--port", "swd:", hex)
	if code != ExitFailure || !strings.Contains(errOut, "no SWD probe found") || !strings.Contains(errOut, "hint:") {
		t.Fatalf("swd: without a probe: exit %d: %s", code, errOut)
	}
}

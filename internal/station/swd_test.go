package station_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/station"
)

// TestTwoSWDBoards provisions two emulated Blue Pills at once through the
// swd back end (a CMSIS-DAP probe model in front of each chip): each gets
// the firmware and its own record, proven by reading both back, and the
// log names each chip by its own unique ID and its probe.
func TestTwoSWDBoards(t *testing.T) {
	l := newLine(t, 16)
	if err := os.WriteFile(filepath.Join(l.dir, "fw.bin"), firmware(6000, 9), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := bluePillConfig(t, l, `protocol = "swd"
ports = ["emu:bluepill#1", "emu:bluepill#2"]`)
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	serialNumbers(t, recs)
	uids := map[string]bool{}
	for _, e := range recs {
		if e.Result != "ok" || e.ReadbackSHA256 != e.ArtifactSHA256 || e.Provision["record_sha256"] != e.Provision["record_readback_sha256"] {
			t.Errorf("record %+v: want ok, read-back = artifact, record read back", e)
		}
		if !strings.Contains(e.Device, "UID ") || !strings.Contains(e.Device, "via kiln CMSIS-DAP model EMU-bluepill") {
			t.Errorf("device %q: want the chip's UID and the probe", e.Device)
		}
		uids[e.Device] = true
		if e.Provision["record_address"] != "0x800fc00" {
			t.Errorf("record at %s, want the last flash page", e.Provision["record_address"])
		}
	}
	if len(uids) != 2 {
		t.Errorf("both boards logged as the same device: %v", uids)
	}
}

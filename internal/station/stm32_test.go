package station_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/station"
)

// TestSTM32Identity provisions an emulated Blue Pill (STM32F103, the
// stm32-uart bootloader, in process): its log record carries the chip's
// own unique ID, and the record goes to the last flash page.
func TestSTM32Identity(t *testing.T) {
	l := newLine(t, 16)
	bin := filepath.Join(l.dir, "fw.bin")
	if err := os.WriteFile(bin, firmware(3000, 3), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := bluePillConfig(t, l, `ports = ["emu:bluepill"]`)
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 1 || recs[0].Result != "ok" {
		t.Fatalf("records %+v", recs)
	}
	e := recs[0]
	if !strings.Contains(e.Device, "stm32 product 0x410") || !strings.Contains(e.Device, " uid ") {
		t.Errorf("device identity %q: want the STM32 product and unique ID", e.Device)
	}
	if e.Provision["record_address"] != "0x800fc00" || e.Provision["record_size"] != "1024" || e.Provision["serial"] != "KLN-000001" {
		t.Errorf("provision %v", e.Provision)
	}
}

// bluePillConfig is the line's station file for Blue Pills given fw.bin at
// the start of flash, with the given target lines.
func bluePillConfig(t *testing.T, l *line, targetLines string) *station.Config {
	t.Helper()
	cfg := l.config(t, "", targetLines)
	src := strings.Replace(mustRead(t, cfg.Source), `board = "arduino-uno"
artifact = "blink.hex"`, `board = "bluepill"
artifact = "fw.bin"
address = 0x08000000`, 1)
	cfg, err := station.ParseConfig([]byte(src), cfg.Source)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

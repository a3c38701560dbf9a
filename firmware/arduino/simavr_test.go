package arduino_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/sim"
)

// simRun builds the sketch directory (its recipe written) and runs the
// image in simavr for the simulated time.
func simRun(t *testing.T, dir string, d time.Duration, pins ...string) *sim.Result {
	t.Helper()
	s, f := buildStore(t)
	res, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f})
	if err != nil {
		var ce *firmware.CommandError
		if errors.As(err, &ce) {
			t.Log(ce.Output)
		}
		t.Fatal(err)
	}
	a, err := sim.LoadArtifact(res.StorePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := boards.Get("arduino-uno")
	if err != nil {
		t.Fatal(err)
	}
	r, err := sim.Run(context.Background(), sim.Options{Board: b, Artifact: a, For: d, Pins: pins})
	if err != nil {
		t.Fatalf("simavr: %v", err)
	}
	return r
}

func needSimavr(t *testing.T) {
	t.Helper()
	needPeer(t)
	if _, err := exec.LookPath("simavr"); err != nil {
		t.Skip("simavr is not installed (make deps installs it)")
	}
}

// Sketches built by kiln run in simavr (the project's harness) and do what
// they should: ASCIITable prints its table, eeprom_crc the CRC-32 of the
// erased EEPROM, Servo's Sweep drives pin 9 with 544…2400 µs pulses.
func TestSketchesRunInSimavr(t *testing.T) {
	needSimavr(t)
	t.Run("ASCIITable", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "ASCIITable")
		copySketch(t, "/usr/share/arduino/examples/04.Communication/ASCIITable", dir)
		writeRecipe(t, dir, "arduino-uno", "")
		r := simRun(t, dir, 5*time.Second) // ~4300 characters at 9600 baud
		out := string(r.UART)
		for _, want := range []string{"ASCII Table ~ Character Map\r\n", "!, dec: 33, hex: 21, oct: 41, bin: 100001\r\n", "~, dec: 126, hex: 7E, oct: 176, bin: 1111110\r\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in the output:\n%s", want, out)
			}
		}
	})
	t.Run("eeprom_crc", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "eeprom_crc")
		copySketch(t, filepath.Join(hostPlatform, "libraries/EEPROM/examples/eeprom_crc"), dir)
		writeRecipe(t, dir, "arduino-uno", "")
		r := simRun(t, dir, 500*time.Millisecond)
		// The example's nibble-table CRC-32, which inverts the CRC after
		// every byte, of an erased EEPROM (1024 × 0xff).
		tab := crc32.MakeTable(crc32.IEEE)
		nibble := func(i uint32) uint32 { return tab[i<<4] }
		crc := ^uint32(0)
		for i := 0; i < 1024; i++ {
			b := uint32(0xff)
			crc = nibble((crc^b)&0x0f) ^ (crc >> 4)
			crc = nibble((crc^(b>>4))&0x0f) ^ (crc >> 4)
			crc = ^crc
		}
		want := fmt.Sprintf("CRC32 of EEPROM data: 0x%X\r\n", crc)
		if out := string(r.UART); !strings.Contains(out, "EEPROM length: 1024\r\n") || !strings.Contains(out, want) {
			t.Errorf("want %q in the output:\n%s", want, out)
		}
	})
	t.Run("ServoSweep", func(t *testing.T) {
		srv := indexServer(t, nil)
		src := t.TempDir()
		if err := fetch.UnpackArchive(filepath.Join(sharedLibs, "Servo-1.3.0.zip"), src); err != nil {
			t.Fatal(err)
		}
		dir, _, err := initSketch(t, srv, filepath.Join(src, "Servo-1.3.0", "examples", "Sweep"), "arduino-uno")
		if err != nil {
			t.Fatal(err)
		}
		r := simRun(t, dir, 3*time.Second, "PB1") // Arduino pin 9
		var widths []time.Duration
		var rise time.Duration = -1
		for _, p := range r.Pins {
			switch {
			case p.Pin == "PB1" && p.Level == 1:
				rise = p.At
			case p.Pin == "PB1" && p.Level == 0 && rise >= 0:
				widths = append(widths, p.At-rise)
				rise = -1
			}
		}
		if len(widths) < 100 {
			t.Fatalf("%d pulses on pin 9 in 3 s (want one per 20 ms)", len(widths))
		}
		lo, hi := widths[0], widths[0]
		for _, w := range widths {
			lo, hi = min(lo, w), max(hi, w)
		}
		near := func(d, us time.Duration) bool {
			return d > us*time.Microsecond-20*time.Microsecond && d < us*time.Microsecond+20*time.Microsecond
		}
		if !near(lo, 544) || !near(hi, 2400) {
			t.Errorf("pulse widths %v…%v, want 544 µs (0°) … 2400 µs (180°)", lo, hi)
		}
	})
}

package arduino_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
)

// BenchmarkBMP280 compares kiln with arduino-builder on the library-heavy
// BMP280 example (three libraries from the index, Wire and SPI from the
// core): a cold build, an unchanged rebuild and a rebuild after a one-line
// edit of the sketch. Targets (issue 13): cold ≤ 0.8×, unchanged ≤ 0.05×,
// edit ≤ 0.5× of arduino-builder's time.
func BenchmarkBMP280(b *testing.B) {
	needPeer(b)
	srv := indexServer(b, nil)
	src := b.TempDir()
	if err := fetch.UnpackArchive(filepath.Join(sharedLibs, "Adafruit_BMP280_Library-2.6.8.zip"), src); err != nil {
		b.Fatal(err)
	}
	dir, res, err := initSketch(b, srv, filepath.Join(src, "Adafruit_BMP280_Library-2.6.8", "examples", "bmp280test"), "arduino-uno")
	if err != nil {
		b.Fatal(err)
	}
	libs := peerLibraries(b, res)
	main := filepath.Join(dir, "bmp280test.ino")
	orig, _ := os.ReadFile(main)
	cacheStore, _ := stores()
	f := &fetch.Fetcher{Store: cacheStore}
	ctx := context.Background()

	kiln := func(s *store.Store) time.Duration {
		t := time.Now()
		if _, err := firmware.Build(ctx, firmware.Options{Dir: dir, Store: s, Fetcher: f}); err != nil {
			b.Fatal(err)
		}
		return time.Since(t)
	}
	bp := b.TempDir()
	ab := func() time.Duration {
		t := time.Now()
		cmd := exec.Command("arduino-builder", "-compile", "-hardware", hostHardware, "-tools", filepath.Join(hostHardware, "tools"),
			"-fqbn", "arduino:avr:uno", "-build-path", bp, "-libraries", libs, "-prefs=compiler.cpp.extra_flags="+decimalDig, main)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("arduino-builder: %v\n%s", err, out)
		}
		return time.Since(t)
	}
	edit := func(n int) {
		src := strings.Replace(string(orig), "delay(2000);", "delay("+string(rune('0'+n))+"000);", 1)
		if src == string(orig) {
			b.Fatal("the example has no delay(2000) to edit")
		}
		os.WriteFile(main, []byte(src), 0o644)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.WriteFile(main, orig, 0o644)
		os.RemoveAll(bp)
		os.MkdirAll(bp, 0o755)
		s, err := store.Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		abCold, kCold := ab(), kiln(s)
		abSame, kSame := ab(), kiln(s)
		edit(3)
		abEdit, kEdit := ab(), kiln(s)
		b.ReportMetric(kCold.Seconds()/abCold.Seconds(), "cold-ratio")
		b.ReportMetric(kSame.Seconds()/abSame.Seconds(), "unchanged-ratio")
		b.ReportMetric(kEdit.Seconds()/abEdit.Seconds(), "edit-ratio")
		b.Logf("cold: kiln %s, arduino-builder %s; unchanged: kiln %s, arduino-builder %s; one-line edit: kiln %s, arduino-builder %s",
			kCold.Round(time.Millisecond), abCold.Round(time.Millisecond), kSame.Round(time.Millisecond), abSame.Round(time.Millisecond),
			kEdit.Round(time.Millisecond), abEdit.Round(time.Millisecond))
	}
	os.WriteFile(main, orig, 0o644)
}

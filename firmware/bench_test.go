package firmware_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"kiln.dev/kiln/firmware"
)

// arduinoBuilder runs Debian's arduino-builder on the same Arduino AVR core
// and avr-gcc 5.4 that the blink-uno recipe pins, with the same
// DECIMAL_DIG workaround.
func arduinoBuilder(ctx context.Context, sketch, buildPath string) error {
	cmd := exec.CommandContext(ctx, "arduino-builder", "-compile",
		"-hardware", "/usr/share/arduino/hardware", "-hardware", "/usr/share/arduino-builder",
		"-tools", "/usr/bin", "-fqbn", "arduino:avr:uno", "-build-path", buildPath,
		"-prefs=compiler.cpp.extra_flags=-DDECIMAL_DIG=__DECIMAL_DIG__",
		"-prefs=compiler.c.extra_flags=-DDECIMAL_DIG=__DECIMAL_DIG__",
		sketch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("arduino-builder: %v\n%s", err, out)
	}
	return nil
}

func timeIt(b *testing.B, f func() error) time.Duration {
	b.Helper()
	t := time.Now()
	if err := f(); err != nil {
		b.Fatal(err)
	}
	return time.Since(t)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkBlinkUnoVsArduinoBuilder builds Blink for the Uno with kiln (the
// kiln command as a process, toolchain already in the store) and with
// arduino-builder: a cold build (kiln: the derivation not in the store;
// arduino-builder: a fresh build path) and a warm rebuild of the unchanged
// sketch. Each is measured three times, alternating, and the medians
// compared. Then both build the sketch from two directories and compare
// the ELF files.
func BenchmarkBlinkUnoVsArduinoBuilder(b *testing.B) {
	if _, err := exec.LookPath("arduino-builder"); err != nil {
		b.Skip("arduino-builder is not installed (make deps installs it)")
	}
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		work := b.TempDir()
		b.Cleanup(func() { makeWritable(work) })
		recipe := filepath.Join(work, "checkout-1", "blink-uno")
		copyRecipe(b, recipeDir("blink-uno"), recipe)
		sketchSrc, err := os.ReadFile(filepath.Join(recipe, "src", "blink.cpp"))
		if err != nil {
			b.Fatal(err)
		}
		sketch := func(dir string) string {
			p := filepath.Join(work, dir, "Blink", "Blink.ino")
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, sketchSrc, 0o644); err != nil {
				b.Fatal(err)
			}
			return p
		}
		s := newStore(b, "blink-uno")
		kiln := func(dir string) error {
			cmd := kilnCommand(ctx, nil, "build", dir, "--store", s.Root, "--out", filepath.Join(work, "out"))
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("kiln build: %v\n%s", err, out)
			}
			return nil
		}
		dropEntry := func() {
			for _, name := range listStore(b, s) {
				if filepath.Ext(name) == "" && len(name) > 33 && name[33:] == "blink-uno" {
					p := filepath.Join(s.Root, name)
					makeWritable(p)
					if err := os.RemoveAll(p); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
		// The first build in this store also verifies the toolchain's files
		// once (afterwards their stamp stands for it): shown, not compared.
		first := timeIt(b, func() error { return kiln(recipe) })
		b.Logf("kiln first build in a fresh store (verifies the 130 MB toolchain once): %s", first.Round(time.Millisecond))

		var kCold, kWarm, aCold, aWarm, fCold []time.Duration
		ino := sketch("sketchbook")
		for round := 0; round < 3; round++ {
			dropEntry()
			kCold = append(kCold, timeIt(b, func() error { return kiln(recipe) }))
			kWarm = append(kWarm, timeIt(b, func() error { return kiln(recipe) }))
			// The builder alone: firmware.Build in this process, without
			// the CLI's evidence step (sbom.cdx.json, provenance.json).
			dropEntry()
			fCold = append(fCold, timeIt(b, func() error {
				_, err := firmware.Build(ctx, firmware.Options{Dir: recipe, Store: s})
				return err
			}))
			bp := filepath.Join(work, fmt.Sprintf("ab-build-%d", round))
			os.MkdirAll(bp, 0o755)
			aCold = append(aCold, timeIt(b, func() error { return arduinoBuilder(ctx, ino, bp) }))
			aWarm = append(aWarm, timeIt(b, func() error { return arduinoBuilder(ctx, ino, bp) }))
		}
		kc, kw, ac, aw := median(kCold), median(kWarm), median(aCold), median(aWarm)
		coldRatio := kc.Seconds() / ac.Seconds()
		warmRatio := kw.Seconds() / aw.Seconds()
		fmt.Printf("blink-uno cold build: kiln %s, arduino-builder %s: ratio %.2fx (target <= 1.0x)\n", kc.Round(time.Millisecond), ac.Round(time.Millisecond), coldRatio)
		fc := median(fCold)
		fmt.Printf("blink-uno cold build, builder alone (firmware.Build, no sbom/provenance step): kiln %s, arduino-builder %s: ratio %.2fx\n", fc.Round(time.Millisecond), ac.Round(time.Millisecond), fc.Seconds()/ac.Seconds())
		b.ReportMetric(fc.Seconds()/ac.Seconds(), "builder-cold-ratio")
		fmt.Printf("blink-uno warm rebuild: kiln %s, arduino-builder %s: ratio %.3fx (target <= 0.1x)\n", kw.Round(time.Millisecond), aw.Round(time.Millisecond), warmRatio)
		b.ReportMetric(coldRatio, "cold-ratio")
		b.ReportMetric(warmRatio, "warm-ratio")
		b.ReportMetric(kc.Seconds(), "kiln-cold-s")
		b.ReportMetric(ac.Seconds(), "ab-cold-s")
		b.ReportMetric(float64(kw.Microseconds())/1000, "kiln-warm-ms")
		b.ReportMetric(float64(aw.Microseconds())/1000, "ab-warm-ms")

		// Reproducibility across directories.
		var abELF [2][]byte
		for j, dir := range []string{"dir-one", "elsewhere/dir-two"} {
			bp := filepath.Join(work, dir, "build")
			os.MkdirAll(bp, 0o755)
			if err := arduinoBuilder(ctx, sketch(dir), bp); err != nil {
				b.Fatal(err)
			}
			if abELF[j], err = os.ReadFile(filepath.Join(bp, "Blink.ino.elf")); err != nil {
				b.Fatal(err)
			}
		}
		recipe2 := filepath.Join(work, "elsewhere", "checkout-2", "blink-uno")
		copyRecipe(b, recipeDir("blink-uno"), recipe2)
		r1, err := firmware.Build(ctx, firmware.Options{Dir: recipe, Store: s})
		if err != nil {
			b.Fatal(err)
		}
		r2, err := firmware.Build(ctx, firmware.Options{Dir: recipe2, Store: newStore(b, "blink-uno")})
		if err != nil {
			b.Fatal(err)
		}
		k1, _ := os.ReadFile(filepath.Join(r1.StorePath, firmware.ELFName))
		k2, _ := os.ReadFile(filepath.Join(r2.StorePath, firmware.ELFName))
		abSame, kSame := bytes.Equal(abELF[0], abELF[1]), bytes.Equal(k1, k2) && len(k1) > 0
		fmt.Printf("blink-uno from two directories: arduino-builder .elf identical: %v; kiln firmware.elf identical: %v (two stores, second built from scratch: hit=%v)\n", abSame, kSame, r2.Hit)
		same := 0.0
		if abSame {
			same = 1
		}
		b.ReportMetric(same, "ab-elf-reproducible")
		if !kSame {
			b.Fatal("kiln's firmware.elf differs between two checkouts")
		}
	}
}

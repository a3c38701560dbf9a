package arduino_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/firmware/arduino/sketchinit"
)

// corpusSketches lists every example sketch in Debian's arduino (the IDE
// examples) and arduino-core-avr (the bundled libraries' examples)
// packages: directories holding <dirname>.ino.
func corpusSketches(t testing.TB) []string {
	t.Helper()
	var out []string
	roots := []string{"/usr/share/arduino/examples"}
	libs, _ := filepath.Glob(filepath.Join(hostPlatform, "libraries", "*", "examples"))
	roots = append(roots, libs...)
	for _, root := range roots {
		root, err := filepath.EvalSymlinks(root)
		if err != nil {
			continue
		}
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				if _, err := os.Stat(filepath.Join(p, fi.Name()+".ino")); err == nil {
					out = append(out, p)
				}
			}
			return nil
		})
	}
	sort.Strings(out)
	if len(out) == 0 {
		t.Skip("no example sketches: Debian's arduino package is not installed (make deps installs it)")
	}
	return out
}

// corpusBoard is one board the corpus is built for, with the FQBN
// arduino-builder gets and which sketches are built (every one, or a
// stated deterministic sample to keep the test's wall time down).
type corpusBoard struct {
	kiln, fqbn string
	every      int // build sketch i when i%every == 0
}

// corpusExceptions are sketches whose kiln image is allowed to differ
// from arduino-builder's, each with its proven cause. None so far.
var corpusExceptions = map[string]string{}

// TestCorpus builds Debian's example sketches with kiln (recipe of kind
// arduino, the unmodified sketch directory) and with arduino-builder, and
// compares the flash images byte for byte: kiln init writes the recipe
// of the unmodified sketch directory, kiln build builds it. Every sketch is
// built for the Uno; every sixth for the Mega 2560 and the Leonardo
// (ATmega32u4, the core's USB stack) and every fifteenth for
// the Nano with the old bootloader and the 8 MHz Pro Mini (deterministic
// samples, to keep the test within a few minutes on two cores). A sketch
// arduino-builder cannot build for a board (the USB examples need
// Keyboard/Mouse, which Debian does not ship) must fail in kiln too.
func TestCorpus(t *testing.T) {
	needPeer(t)
	sketches := corpusSketches(t)
	s, f := buildStore(t)
	ctx := context.Background()
	boardsToBuild := []corpusBoard{
		{kiln: "arduino-uno", fqbn: "arduino:avr:uno", every: 1},
		{kiln: "arduino-mega2560", fqbn: "arduino:avr:mega:cpu=atmega2560", every: 6},
		{kiln: "arduino-leonardo", fqbn: "arduino:avr:leonardo", every: 6},
		{kiln: "arduino-nano-old", fqbn: "arduino:avr:nano:cpu=atmega328old", every: 15},
		{kiln: "arduino-pro-mini-3v3", fqbn: "arduino:avr:pro:cpu=8MHzatmega328", every: 15},
	}
	srv := indexServer(t, nil)
	type job struct {
		board  corpusBoard
		sketch string
	}
	var jobs []job
	for _, b := range boardsToBuild {
		for i, sk := range sketches {
			if i%b.every == 0 {
				jobs = append(jobs, job{b, sk})
			}
		}
	}
	start := time.Now()
	var (
		mu                      sync.Mutex
		same, bothFail, skipped int
	)
	work := make(chan job)
	var wg sync.WaitGroup
	workers := runtime.NumCPU()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				name := j.board.kiln + "/" + filepath.Base(j.sketch)
				dir := filepath.Join(t.TempDir(), filepath.Base(j.sketch))
				copySketch(t, j.sketch, dir)
				core := coreInput
				ini, initErr := sketchinit.Init(ctx, sketchinit.Options{Sketch: dir, Board: j.board.kiln,
					Index: srv.URL + "/library_index.json", Store: f.Store, HTTP: srv.Client(), Core: &core})
				t0 := time.Now()
				// arduino-builder gets the libraries kiln init pinned (the
				// Starter Kit's Servo and LiquidCrystal come from the index).
				pb := peerBuild{Sketch: dir, FQBN: j.board.fqbn, Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}}
				if initErr == nil && len(ini.Libraries) > 0 {
					pb.Libraries = peerLibraries(t, ini)
				}
				img, peerOut, peerErr := pb.run(t)
				t1 := time.Now()
				var res *firmware.Result
				err := initErr
				if err == nil {
					res, err = firmware.Build(ctx, firmware.Options{Dir: dir, Store: s, Fetcher: f, Jobs: 1})
				}
				if testing.Verbose() {
					t.Logf("%s: arduino-builder %s, kiln %s", name, t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
				}
				mu.Lock()
				switch {
				case peerErr != nil && err != nil:
					bothFail++
					t.Logf("%s: both refuse; kiln: %v", name, oneLine(err.Error(), 160))
				case peerErr != nil:
					t.Errorf("%s: arduino-builder fails (%v) but kiln builds it\n%s", name, peerErr, lastLines(peerOut, 5))
				case err != nil:
					var ce *firmware.CommandError
					out := ""
					if errorsAs(err, &ce) {
						out = lastLines(ce.Output, 10)
					}
					t.Errorf("%s: kiln: %v\n%s", name, err, out)
				case res.Manifest.ImageSHA256 != img.SHA256():
					if why, ok := corpusExceptions[name]; ok {
						skipped++
						t.Logf("%s: differs, as known: %s", name, why)
						break
					}
					t.Errorf("%s: image %s (%d bytes), arduino-builder's %s (%d bytes)", name, res.Manifest.ImageSHA256, res.Manifest.ImageSize, img.SHA256(), img.Size())
				default:
					same++
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	t.Logf("%d builds in %s: %d images identical to arduino-builder's, %d sketches both refuse, %d known exceptions",
		len(jobs), time.Since(start).Round(time.Second), same, bothFail, skipped)
	if same == 0 {
		t.Error("no image compared")
	}
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

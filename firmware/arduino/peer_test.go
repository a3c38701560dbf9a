package arduino_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
)

// The peer: Debian's arduino-builder with Debian's AVR core, run on the
// host. gcc-avr 5.4 with avr-libc 2.0 lacks DECIMAL_DIG, which the core's
// WString.cpp uses, so both builders get it defined (compiler.cpp.extra_flags
// keeps a 32u4 board's build.extra_flags, its USB IDs).
const (
	hostPlatform = "/usr/share/arduino/hardware/arduino/avr"
	hostHardware = "/usr/share/arduino/hardware"
	decimalDig   = "-DDECIMAL_DIG=__DECIMAL_DIG__"
	coreDeb      = "deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"
	coreSHA      = "357869fa1f5a122ea06f470b9a88d2e5d27dd52afb0de0578ecd1b72d6b5c8c4"
)

// peerVersions are the Debian packages whose versions key the cached
// reference outputs.
var peerVersions = sync.OnceValue(func() string {
	out, err := exec.Command("dpkg-query", "-W", "arduino-builder", "arduino-core-avr", "arduino-ctags", "gcc-avr", "binutils-avr", "avr-libc").Output()
	if err != nil {
		return "unknown"
	}
	return string(out)
})

func needPeer(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("arduino-builder"); err != nil {
		t.Skip("arduino-builder is not installed (make deps installs it)")
	}
	if _, err := os.Stat(hostPlatform); err != nil {
		t.Skip("Debian's arduino-core-avr is not installed (make deps installs it)")
	}
}

// refCacheDir is where arduino-builder's outputs are kept between runs,
// keyed by everything they depend on.
func refCacheDir() string {
	if d := os.Getenv("KILN_TEST_CACHE"); d != "" {
		return filepath.Join(d, "arduino-ref")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "kiln-test", "arduino-ref")
}

// peerBuild is one arduino-builder run: the sketch (a directory), the FQBN
// and the library directories (each holding library folders).
type peerBuild struct {
	Sketch    string
	FQBN      string
	Prefs     []string
	Libraries string
}

func (pb peerBuild) key() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%q\n", peerVersions(), pb.FQBN, pb.Prefs)
	for _, dir := range []string{pb.Sketch, pb.Libraries} {
		if dir == "" {
			continue
		}
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			data, _ := os.ReadFile(p)
			fmt.Fprintf(h, "%s %x\n", rel, sha256.Sum256(data))
			return nil
		})
		fmt.Fprintf(h, "--\n")
	}
	fmt.Fprintf(h, "%s\n", filepath.Base(pb.Sketch))
	return hex.EncodeToString(h.Sum(nil))
}

// peerSem keeps arduino-builder runs to one per CPU across tests.
var peerSem = make(chan struct{}, 2)

// peerSlots are core caches for concurrent arduino-builder runs.
var peerSlots = func() chan string {
	c := make(chan string, 2)
	for i := 0; i < 2; i++ {
		d, _ := os.MkdirTemp("", "kiln-peer-cache-")
		c <- d
	}
	return c
}()

// run returns arduino-builder's flash image for the build (its .hex),
// or its output when it fails; results are cached by key.
func (pb peerBuild) run(t testing.TB) (*flash.Image, string, error) {
	t.Helper()
	dir := filepath.Join(refCacheDir(), pb.key())
	hexFile := filepath.Join(dir, "sketch.hex")
	failFile := filepath.Join(dir, "failed.txt")
	if out, err := os.ReadFile(failFile); err == nil {
		return nil, string(out), fmt.Errorf("arduino-builder failed (cached)")
	}
	if _, err := os.Stat(hexFile); err != nil {
		peerSem <- struct{}{}
		err := pb.build(t, dir)
		<-peerSem
		if err != nil {
			return nil, "", err
		}
	}
	if out, err := os.ReadFile(failFile); err == nil {
		return nil, string(out), fmt.Errorf("arduino-builder failed")
	}
	f, err := os.Open(hexFile)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	img, err := flash.ParseHex(hexFile, f)
	return img, "", err
}

func (pb peerBuild) build(t testing.TB, dir string) error {
	tmp, err := os.MkdirTemp("", "kiln-peer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bp := filepath.Join(tmp, "build")
	os.Mkdir(bp, 0o755)
	// core.a is cached per FQBN (arduino-builder's -build-cache), in a
	// directory of this process's own for each concurrent run.
	slot := <-peerSlots
	defer func() { peerSlots <- slot }()
	args := []string{"-compile", "-hardware", hostHardware, "-tools", filepath.Join(hostHardware, "tools"),
		"-fqbn", pb.FQBN, "-build-path", bp, "-build-cache", slot}
	for _, p := range pb.Prefs {
		args = append(args, "-prefs="+p)
	}
	if pb.Libraries != "" {
		args = append(args, "-libraries", pb.Libraries)
	}
	main := filepath.Join(pb.Sketch, filepath.Base(pb.Sketch)+".ino")
	if _, err := os.Stat(main); err != nil {
		main = filepath.Join(pb.Sketch, filepath.Base(pb.Sketch)+".pde")
	}
	cmd := exec.Command("arduino-builder", append(args, main)...)
	out, runErr := cmd.CombinedOutput()
	work := dir + ".tmp" + fmt.Sprint(os.Getpid())
	os.RemoveAll(work)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	if runErr != nil {
		os.WriteFile(filepath.Join(work, "failed.txt"), out, 0o644)
	} else {
		data, err := os.ReadFile(filepath.Join(bp, filepath.Base(main)+".hex"))
		if err != nil {
			return fmt.Errorf("arduino-builder left no hex: %v\n%s", err, out)
		}
		os.WriteFile(filepath.Join(work, "sketch.hex"), data, 0o644)
		os.WriteFile(filepath.Join(work, "output.txt"), out, 0o644)
	}
	os.RemoveAll(dir)
	return os.Rename(work, dir)
}

// The stores: toolchains and inputs come from the user's store (fetched
// once, as kiln would), builds go to a fresh store per test binary.
var stores = sync.OnceValues(func() (*store.Store, error) {
	return store.Open("")
})

func buildStore(t testing.TB) (*store.Store, *fetch.Fetcher) {
	t.Helper()
	cacheStore, err := stores()
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s, &fetch.Fetcher{Store: cacheStore}
}

// recipeFor writes a recipe of kind arduino into a copy of the sketch.
func copySketch(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func writeRecipe(t testing.TB, dir, board string, extra string) {
	t.Helper()
	name := strings.ToLower(filepath.Base(dir))
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '-'
	}, name)
	recipe := fmt.Sprintf(`name = %q
version = "1.0.0"
kind = "arduino"
board = %q
toolchain = "avr-gcc-5.4-arduino"
arduino.properties = { "compiler.cpp.extra_flags" = %q }

[[inputs]]
name = "arduino-core-avr"
sources = [%q]
sha256 = %q
%s`, name, board, decimalDig, coreDeb, coreSHA, extra)
	if err := os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
}

// kilnBuild builds the recipe in dir and returns its result.
func kilnBuild(t testing.TB, ctx context.Context, s *store.Store, f *fetch.Fetcher, dir string, jobs int) (*firmware.Result, error) {
	t.Helper()
	return firmware.Build(ctx, firmware.Options{Dir: dir, Store: s, Fetcher: f, Jobs: jobs})
}

func TestBlinkUnoMatchesArduinoBuilder(t *testing.T) {
	needPeer(t)
	ctx := context.Background()
	s, f := buildStore(t)
	dir := filepath.Join(t.TempDir(), "Blink")
	copySketch(t, "/usr/share/arduino/examples/01.Basics/Blink", dir)
	writeRecipe(t, dir, "arduino-uno", "")
	res, err := kilnBuild(t, ctx, s, f, dir, 2)
	if err != nil {
		var ce *firmware.CommandError
		if asCE(err, &ce) {
			t.Logf("output:\n%s", ce.Output)
		}
		t.Fatal(err)
	}
	img, out, err := peerBuild{Sketch: dir, FQBN: "arduino:avr:uno", Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}}.run(t)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got, want := res.Manifest.ImageSHA256, img.SHA256(); got != want {
		t.Errorf("image %s, arduino-builder's %s", got, want)
	}
	log, err := os.ReadFile(filepath.Join(res.StorePath, firmware.BuildLogName))
	if err != nil || !bytes.Contains(log, []byte("-DARDUINO_AVR_UNO")) {
		t.Errorf("build.log: %v\n%s", err, log)
	}
}

func asCE(err error, ce **firmware.CommandError) bool { return errorsAs(err, ce) }

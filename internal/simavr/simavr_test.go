package simavr_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/simavr"
)

// The real Optiboot v8.3 for the ATmega328P at 16 MHz / 115200 baud, as the
// Arduino Uno ships it; it lives beside the repository (../shared/peers).
const bootloaderName = "optiboot_atmega328_v8.3.hex"

const (
	flashSize = 32 * 1024
	bootAddr  = 0x7E00 // Optiboot's boot section: the last 512 bytes
	appSize   = bootAddr
)

var (
	harness  string // compiled once per test run (TestMain)
	tmpRoot  string
	kilnOnce sync.Once
	kilnBin  string
	kilnErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-simavr-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpRoot = dir
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	harness, err = simavr.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the package directory")
		}
		dir = parent
	}
}

// bootloader returns the path of the real Optiboot image. It is the one
// input that is not part of the repository or of Debian: without it there
// is nothing to simulate.
func bootloader(t testing.TB) string {
	t.Helper()
	p := filepath.Join(repoRoot(t), "..", "shared", "peers", bootloaderName)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("the real Optiboot image is missing (%v): it is expected at ../shared/peers/%s beside the repository", err, bootloaderName)
	}
	return p
}

// kiln builds the kiln command once per test run.
func kiln(t testing.TB) string {
	t.Helper()
	kilnOnce.Do(func() {
		kilnBin = filepath.Join(tmpRoot, "kiln")
		cmd := exec.Command("go", "build", "-o", kilnBin, "./cmd/kiln")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			kilnErr = fmt.Errorf("go build ./cmd/kiln: %v\n%s", err, out)
		}
	})
	if kilnErr != nil {
		t.Fatal(kilnErr)
	}
	return kilnBin
}

// start runs a fresh simulated Uno and closes it when the test ends; the
// harness's diagnostics are logged if the test fails.
func start(t testing.TB) *simavr.Sim {
	t.Helper()
	var stderr syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sim, err := simavr.Start(ctx, simavr.Options{Bootloader: bootloader(t), Harness: harness, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sim.Close()
		if t.Failed() {
			t.Logf("harness events: %q", sim.Events())
			t.Logf("harness stderr:\n%s", stderr.String())
		}
	})
	return sim
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// randomImage writes n random bytes at address 0 as Intel HEX.
func randomImage(t testing.TB, n int) (path string, data []byte) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("random image seed %d", seed)
	r := rand.New(rand.NewPCG(seed, seed>>1|1))
	data = make([]byte, n)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	path = filepath.Join(t.TempDir(), "random.hex")
	if err := os.WriteFile(path, intelHex(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// intelHex encodes data at address 0 (below 64 KiB) as Intel HEX records.
func intelHex(data []byte) []byte {
	var b bytes.Buffer
	for off := 0; off < len(data); off += 16 {
		chunk := data[off:min(off+16, len(data))]
		rec := append([]byte{byte(len(chunk)), byte(off >> 8), byte(off), 0}, chunk...)
		var sum byte
		for _, c := range rec {
			sum += c
		}
		rec = append(rec, -sum)
		fmt.Fprintf(&b, ":%s\n", strings.ToUpper(hex.EncodeToString(rec)))
	}
	b.WriteString(":00000001FF\n")
	return b.Bytes()
}

// checkFlash proves the simulated MCU holds img in its application area and
// the untouched bootloader in its boot section.
func checkFlash(t testing.TB, sim *simavr.Sim, img *flash.Image) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := sim.Flash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != flashSize {
		t.Fatalf("simulated flash is %d bytes, want %d", len(got), flashSize)
	}
	for _, s := range img.Segments {
		if d := firstDiff(got[s.Addr:s.End()], s.Data); d >= 0 {
			t.Fatalf("simulated flash differs from the image at 0x%04x: 0x%02x, want 0x%02x", s.Addr+uint32(d), got[s.Addr+uint32(d)], s.Data[d])
		}
	}
	boot, err := flash.Load(bootloader(t), flash.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range boot.Segments {
		if !bytes.Equal(got[s.Addr:s.End()], s.Data) {
			t.Fatalf("the bootloader at 0x%04x changed", s.Addr)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestAvrdudeWritesOptiboot validates the harness with the reference tool:
// avrdude 7.1 (-c arduino) writes and verifies a 32256-byte image to the
// real Optiboot in simavr, and the flash simavr holds afterwards is the
// image, with the bootloader intact.
func TestAvrdudeWritesOptiboot(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("avrdude"); err != nil {
		t.Fatalf("avrdude is not installed (make deps installs it): %v", err)
	}
	path, data := randomImage(t, appSize)
	sim := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "avrdude", "-c", "arduino", "-b", "115200", "-P", sim.Port,
		"-p", "m328p", "-U", "flash:w:"+path+":i").CombinedOutput()
	if err != nil {
		t.Fatalf("avrdude: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(fmt.Sprintf("%d bytes of flash verified", appSize))) {
		t.Fatalf("avrdude did not report a verified write:\n%s", out)
	}
	img, err := flash.Load(path, flash.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.SHA256() != sha(data) {
		t.Fatalf("image hash %s, want %s", img.SHA256(), sha(data))
	}
	checkFlash(t, sim, img)
	assertClean(t, sim)
}

// assertClean fails if bytes were lost on the simulated line: a real
// ATmega would have lost them too, and the tool would have been lucky.
func assertClean(t testing.TB, sim *simavr.Sim) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sim.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("line: %d bytes to the MCU, %d from it, %d overruns; simulation fell behind real time %d times",
		st.RX, st.TX, st.Overruns, st.Behind)
	if st.Overruns != 0 {
		t.Errorf("%d bytes overran the MCU's receiver", st.Overruns)
	}
}

// kilnReport is the part of kiln flash --json the test checks.
type kilnReport struct {
	Device       string  `json:"device"`
	ImageSHA256  string  `json:"image_sha256"`
	DeviceSHA256 string  `json:"device_sha256"`
	Bytes        int     `json:"bytes"`
	Verified     bool    `json:"verified"`
	WriteSec     float64 `json:"write_seconds"`
	VerifySec    float64 `json:"verify_seconds"`
	Error        string  `json:"error"`
}

// kilnFlash runs the kiln command: flash ARTIFACT to the simulated Uno.
func kilnFlash(t testing.TB, port, artifact string) kilnReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kiln(t), "flash", "--board", "arduino-uno", "--port", port, "--json", artifact)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var rep kilnReport
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("kiln flash: %v; stdout is not its JSON report (%v):\n%s\nstderr:\n%s", err, jerr, stdout.Bytes(), stderr.Bytes())
	}
	if err != nil {
		t.Fatalf("kiln flash: %v: %s\nstderr:\n%s", err, rep.Error, stderr.Bytes())
	}
	return rep
}

// TestKilnFlashesOptiboot is the proof against the real bootloader: the kiln
// command flashes an image to Optiboot v8.3 running in simavr, the device
// hash it reports is the image's, and the flash simavr holds afterwards is
// the image.
func TestKilnFlashesOptiboot(t *testing.T) {
	t.Parallel()
	kiln(t)
	t.Run("random-32256", func(t *testing.T) {
		t.Parallel()
		path, data := randomImage(t, appSize)
		flashAndProve(t, path, sha(data))
	})
	t.Run("blink-uno", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "blink-uno")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, kiln(t), "build", filepath.Join(repoRoot(t), "recipes", "blink-uno"), "--out", out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kiln build recipes/blink-uno: %v\n%s", err, b)
		}
		flashAndProve(t, out, "")
	})
}

// flashAndProve flashes artifact with kiln and checks the report and the
// simulated flash. want is the expected image hash ("" to take the loader's).
func flashAndProve(t *testing.T, artifact, want string) {
	img, err := flash.Load(artifact, flash.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want == "" {
		want = img.SHA256()
	}
	if img.SHA256() != want {
		t.Fatalf("kiln loads %s with hash %s, want %s", artifact, img.SHA256(), want)
	}
	sim := start(t)
	rep := kilnFlash(t, sim.Port, artifact)
	t.Logf("kiln: %d bytes, write %.2fs, verify %.2fs, device %q", rep.Bytes, rep.WriteSec, rep.VerifySec, rep.Device)
	if !rep.Verified {
		t.Errorf("kiln reported verified=false")
	}
	if rep.ImageSHA256 != want {
		t.Errorf("kiln's image hash %s, want %s", rep.ImageSHA256, want)
	}
	if rep.DeviceSHA256 != want {
		t.Errorf("kiln's device hash %s, want the image's %s", rep.DeviceSHA256, want)
	}
	if !strings.Contains(rep.Device, "1e950f") {
		t.Errorf("kiln's device %q does not name the ATmega328P signature 1e950f", rep.Device)
	}
	checkFlash(t, sim, img)
	assertClean(t, sim)
}

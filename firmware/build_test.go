package firmware_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

var hashRE = regexp.MustCompile(`\b[0-9a-f]{64}\b`)

// copyRecipe copies the files of a recipe directory to dst.
func copyRecipe(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return copyFile(p, filepath.Join(dst, rel), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readOutputs(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{firmware.ELFName, firmware.HEXName, firmware.BINName, firmware.ManifestName} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// TestHashOfflineMatchesManifest: `kiln hash` needs no network (it runs
// under unshare -n) and prints the derivation the build's manifest names.
func TestHashOfflineMatchesManifest(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) is not installed")
	}
	res := sharedBuild(t, "blink-uno")
	cmd := kilnCommand(context.Background(), []string{"unshare", "-r", "-n"}, "hash", recipeDir("blink-uno"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unshare -n kiln hash: %v\n%s", err, out)
	}
	got := hashRE.FindString(string(out))
	if got == "" {
		t.Fatalf("kiln hash printed no hash: %q", out)
	}
	if got != res.Manifest.Derivation || got != res.Derivation {
		t.Fatalf("kiln hash = %s, manifest derivation = %s", got, res.Manifest.Derivation)
	}
}

// TestReproducible: two checkouts at different paths, two stores, two
// times: the same bytes.
func TestReproducible(t *testing.T) {
	for _, name := range []string{"blink-uno", "blink-nucleo-f401re"} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			base := t.TempDir()
			dirA := filepath.Join(base, "checkout-a", name)
			dirB := filepath.Join(base, "elsewhere", "much", "deeper", "checkout-b", name)
			copyRecipe(t, recipeDir(name), dirA)
			copyRecipe(t, recipeDir(name), dirB)
			sA, sB := newStore(t, name), newStore(t, name)

			t1 := time.Now()
			r1, err := firmware.Build(ctx, firmware.Options{Dir: dirA, Store: sA, Out: filepath.Join(base, "out-a")})
			if err != nil {
				t.Fatal(err)
			}
			// A different wall clock for the second build: SOURCE_DATE_EPOCH,
			// not the time, is what a build may record.
			if d := 1100*time.Millisecond - time.Since(t1); d > 0 {
				time.Sleep(d)
			}
			r2, err := firmware.Build(ctx, firmware.Options{Dir: dirB, Store: sB, Out: filepath.Join(base, "out-b")})
			if err != nil {
				t.Fatal(err)
			}
			if r1.Hit || r2.Hit {
				t.Fatalf("fresh stores gave a store hit (%v, %v)", r1.Hit, r2.Hit)
			}
			if r1.StorePath == r2.StorePath || r1.Derivation != r2.Derivation {
				t.Fatalf("store paths %s, %s; derivations %s, %s", r1.StorePath, r2.StorePath, r1.Derivation, r2.Derivation)
			}
			a, b := readOutputs(t, r1.Out), readOutputs(t, r2.Out)
			for name, data := range a {
				if !bytes.Equal(data, b[name]) {
					t.Errorf("%s differs between the two builds", name)
				}
			}
			if !r1.Manifest.Sandbox {
				t.Error("manifest says the build ran without the sandbox")
			}
		})
	}
}

// TestHexAndBinMatchObjcopy: kiln's HEX converted by the toolchain's own
// objcopy equals kiln's BIN, and both equal objcopy's binary of the ELF's
// loadable sections.
func TestHexAndBinMatchObjcopy(t *testing.T) {
	for _, tc := range []struct{ recipe, objcopy string }{
		{"blink-uno", "avr-objcopy"},
		{"blink-mega2560", "avr-objcopy"},
		{"blink-nucleo-f401re", "arm-none-eabi-objcopy"},
		{"blink-bluepill", "arm-none-eabi-objcopy"},
	} {
		t.Run(tc.recipe, func(t *testing.T) {
			objcopy, err := exec.LookPath(tc.objcopy)
			if err != nil {
				t.Skipf("%s is not installed (make deps installs it)", tc.objcopy)
			}
			res := sharedBuild(t, tc.recipe)
			dir := t.TempDir()
			fromHex := filepath.Join(dir, "from-hex.bin")
			fromELF := filepath.Join(dir, "from-elf.bin")
			run := func(args ...string) {
				if out, err := exec.Command(objcopy, args...).CombinedOutput(); err != nil {
					t.Fatalf("%s %s: %v\n%s", tc.objcopy, strings.Join(args, " "), err, out)
				}
			}
			run("-I", "ihex", "-O", "binary", filepath.Join(res.StorePath, firmware.HEXName), fromHex)
			elfPath := filepath.Join(res.StorePath, firmware.ELFName)
			run(append(append([]string{"-O", "binary", "--gap-fill", "0xff"}, loadedSections(t, elfPath)...), elfPath, fromELF)...)
			bin, _ := os.ReadFile(filepath.Join(res.StorePath, firmware.BINName))
			h, _ := os.ReadFile(fromHex)
			e, _ := os.ReadFile(fromELF)
			if len(bin) == 0 || !bytes.Equal(bin, h) {
				t.Errorf("objcopy of kiln's HEX (%d bytes) != kiln's BIN (%d bytes)", len(h), len(bin))
			}
			if !bytes.Equal(bin, e) {
				t.Errorf("objcopy of the ELF (%d bytes) != kiln's BIN (%d bytes)", len(e), len(bin))
			}
			// The HEX also reads back, through kiln's own parser, to the
			// ELF's segments at their addresses.
			hf, _ := os.Open(filepath.Join(res.StorePath, firmware.HEXName))
			defer hf.Close()
			img, err := flash.ParseHex("firmware.hex", hf)
			if err != nil {
				t.Fatal(err)
			}
			if img.SHA256() != res.Manifest.ImageSHA256 || img.Extent().Addr != res.Manifest.LoadAddress {
				t.Errorf("HEX image %s at 0x%x, manifest %s at 0x%x", img.SHA256(), img.Extent().Addr, res.Manifest.ImageSHA256, res.Manifest.LoadAddress)
			}
			// DfuSe boards also get firmware.dfu: the same image, a suffix
			// dfu-util's dfu-suffix accepts, the board's DFU-mode USB ID.
			dfuPath := filepath.Join(res.StorePath, firmware.DFUName)
			_, err = os.Stat(dfuPath)
			if dfuse := res.Manifest.Board == "nucleo-f401re"; (err == nil) != dfuse {
				t.Fatalf("firmware.dfu present: %v, want %v", err == nil, dfuse)
			}
			if err != nil {
				return
			}
			dimg, err := flash.Load(dfuPath, flash.LoadOptions{})
			if err != nil || dimg.SHA256() != res.Manifest.ImageSHA256 || dimg.Extent().Addr != res.Manifest.LoadAddress {
				t.Fatalf("firmware.dfu: %v, image %v", err, dimg)
			}
			if out, err := exec.Command("dfu-suffix", "-c", dfuPath).CombinedOutput(); err != nil || !strings.Contains(string(out), "0x0483") || !strings.Contains(strings.ToLower(string(out)), "0xdf11") {
				t.Errorf("dfu-suffix -c: %v\n%s", err, out)
			}
		})
	}
}

// loadedSections returns objcopy's -j options for the sections that put
// bytes in flash: allocated, with content, not empty. (An empty AVR .data
// sits at its RAM address 0x800100 and would stretch objcopy's binary to
// 8 MiB.)
func loadedSections(t *testing.T, path string) []string {
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var args []string
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Type != elf.SHT_NOBITS && s.Size > 0 {
			args = append(args, "-j", s.Name)
		}
	}
	return args
}

// TestManifest checks what manifest.json says against the files.
func TestManifest(t *testing.T) {
	res := sharedBuild(t, "blink-uno")
	m, err := firmware.ReadManifest(res.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{firmware.ELFName, firmware.HEXName, firmware.BINName} {
		data, err := os.ReadFile(filepath.Join(res.StorePath, name))
		if err != nil {
			t.Fatal(err)
		}
		o := m.Outputs[name]
		if sum, _ := recipes.HashFile(filepath.Join(res.StorePath, name)); o.SHA256 != sum || o.Size != int64(len(data)) {
			t.Errorf("%s: manifest %s/%d, file %s/%d", name, o.SHA256, o.Size, sum, len(data))
		}
	}
	if m.Board != "arduino-uno" || m.LoadAddress != 0 || m.FlashSize != 32256 || m.ImageSize == 0 {
		t.Errorf("board %s, load 0x%x, flash %d, image %d", m.Board, m.LoadAddress, m.FlashSize, m.ImageSize)
	}
	if !m.Sandbox || m.SourceDateEpoch != firmware.DefaultSourceDateEpoch {
		t.Errorf("sandbox %v, SOURCE_DATE_EPOCH %d", m.Sandbox, m.SourceDateEpoch)
	}
	if len(m.Inputs) != 1 || m.Inputs[0].Name != "arduino-core-avr" || len(m.Inputs[0].SHA256) != 64 {
		t.Errorf("inputs: %+v", m.Inputs)
	}
	if m.Toolchain.Name != "avr-gcc-5.4" || len(m.Toolchain.Packages) < 3 {
		t.Errorf("toolchain: %+v", m.Toolchain)
	}
	libc := false
	for _, im := range m.HostImpurities {
		if len(im.SHA256) != 64 {
			t.Errorf("impurity %s has no hash", im.Path)
		}
		if sum, err := recipes.HashFile(im.Path); err != nil || sum != im.SHA256 {
			t.Errorf("impurity %s: hash %s, manifest %s (%v)", im.Path, sum, im.SHA256, err)
		}
		libc = libc || strings.HasSuffix(im.Target, "/libc.so.6")
	}
	if !libc {
		t.Errorf("host impurities do not name libc.so.6: %+v", m.HostImpurities)
	}
	if len(m.Sources) != 1 || m.Sources[0].Path != "src/blink.cpp" {
		t.Errorf("sources: %+v", m.Sources)
	}
}

// TestCheckExampleRecipes: --check rebuilds every shipped recipe in a fresh
// sandbox and finds every output bit-identical.
func TestCheckExampleRecipes(t *testing.T) {
	for _, name := range exampleRecipes {
		t.Run(name, func(t *testing.T) {
			sharedBuild(t, name)
			res, err := firmware.Build(context.Background(), firmware.Options{Dir: recipeDir(name), Store: shared.store, Check: true})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Hit || !res.Checked {
				t.Fatalf("hit %v, checked %v", res.Hit, res.Checked)
			}
		})
	}
}

// TestStoreHitRunsNoCompiler: an unchanged recipe is a store hit. The
// store here holds the firmware's entry and nothing else — no toolchain, no
// input — so a build that needed a compiler could not run.
func TestStoreHitRunsNoCompiler(t *testing.T) {
	built := sharedBuild(t, "blink-bluepill")
	s := storeWith(t, built.StorePath)
	out := filepath.Join(t.TempDir(), "out")
	res, err := firmware.Build(context.Background(), firmware.Options{Dir: recipeDir("blink-bluepill"), Store: s, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Hit || res.StorePath != filepath.Join(s.Root, filepath.Base(built.StorePath)) {
		t.Fatalf("hit %v at %s, want a hit on the copied entry", res.Hit, res.StorePath)
	}
	if got := listStore(t, s); len(got) != 1 {
		t.Fatalf("the store hit added to the store: %v", got)
	}
	a, b := readOutputs(t, built.StorePath), readOutputs(t, out)
	for name := range a {
		if !bytes.Equal(a[name], b[name]) {
			t.Errorf("%s in --out differs from the store", name)
		}
	}
}

// TestSandboxHasNoNetwork: a pre command that tries to connect to a
// listener on the host's loopback fails, and the listener sees nothing.
func TestSandboxHasNoNetwork(t *testing.T) {
	dir := t.TempDir()
	probe, sum := buildProbe(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	// The probe can reach the listener from the host: the test is not
	// passing for the wrong reason.
	if out, err := exec.Command(probe, ln.Addr().String()).CombinedOutput(); err != nil {
		t.Fatalf("probe on the host: %v\n%s", err, out)
	}
	(<-accepted).Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()

	rdir := writeProbeRecipe(t, dir, "net-probe", probe, sum, fmt.Sprintf(`"$in/probe/probe", %q`, ln.Addr().String()), "", "", nil)
	s := sharedStore(t)
	_, err = firmware.Build(context.Background(), firmware.Options{Dir: rdir, Store: s})
	var ce *firmware.CommandError
	if !errors.As(err, &ce) || !errors.Is(err, firmware.ErrCommand) {
		t.Fatalf("build with a connecting pre command: %v, want a failed command", err)
	}
	if !strings.Contains(ce.Output, "probe: no connection") || !strings.Contains(ce.Output, "network is unreachable") {
		t.Fatalf("the probe did not run or failed for another reason: %s", ce.Output)
	}
	select {
	case c := <-accepted:
		c.Close()
		t.Fatal("the listener on the host accepted a connection from the sandbox")
	case <-time.After(200 * time.Millisecond):
	}
}

// writeProbeRecipe writes a bluepill recipe in dir/name whose input is the
// probe and whose one pre command is argv (TOML strings, comma-separated);
// top and build are more TOML lines for the recipe and its [build], files
// the recipe's files (default: an empty main.c).
func writeProbeRecipe(t *testing.T, dir, name, probe, sum, argv, top, build string, files map[string]string) string {
	t.Helper()
	rdir := filepath.Join(dir, name)
	if files == nil {
		files = map[string]string{"src/main.c": "int main(void) { for (;;) {} }\n"}
	}
	writeRecipe(t, rdir, fmt.Sprintf(`name = %q
version = "1.0.0"
board = "bluepill"
toolchain = "arm-none-eabi-12.2"
sources = ["src/*.c"]
%s
[[inputs]]
name = "probe"
sources = ["file:%s"]
sha256 = "%s"
executable = true

[build]
pre = [[%s]]
%s`, name, top, probe, sum, argv, build), files)
	return rdir
}

// buildProbe builds testdata/probe as a static program (no C library: it
// runs in the sandbox as it is) and returns its path and sha256.
func buildProbe(t *testing.T, dir string) (string, string) {
	t.Helper()
	probe := filepath.Join(dir, "probe")
	build := exec.Command("go", "build", "-trimpath", "-o", probe, "./testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}
	sum, err := recipes.HashFile(probe)
	if err != nil {
		t.Fatal(err)
	}
	return probe, sum
}

// TestCheckFindsNondeterminism: a build that puts a random number in the
// firmware (a pre command writes it into a header) fails --check, which
// names the outputs that differ.
func TestCheckFindsNondeterminism(t *testing.T) {
	dir := t.TempDir()
	probe, sum := buildProbe(t, dir)
	rdir := writeProbeRecipe(t, dir, "random", probe, sum, `"$in/probe/probe", "write", "src/random.h"`, `files = ["src/*.ld"]`,
		`ldflags = ["-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections"]
linker_script = "$src/src/stm32f103c8.ld"
`, map[string]string{"src/main.c": `#include "random.h"
volatile unsigned int value = RANDOM_VALUE;
int main(void) { for (;;) { value++; } }
`, "src/random.h": "#define RANDOM_VALUE 0u\n",
			"src/startup.c":      readFile(t, filepath.Join(recipeDir("blink-bluepill"), "src", "startup.c")),
			"src/stm32f103c8.ld": readFile(t, filepath.Join(recipeDir("blink-bluepill"), "src", "stm32f103c8.ld"))})
	_, err := firmware.Build(context.Background(), firmware.Options{Dir: rdir, Store: sharedStore(t), Check: true})
	if !errors.Is(err, firmware.ErrNotReproducible) {
		t.Fatalf("--check of a random build: %v, want ErrNotReproducible", err)
	}
	for _, name := range []string{firmware.ELFName, firmware.BINName, firmware.HEXName} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeRecipe(t *testing.T, dir, recipe string, files map[string]string) {
	t.Helper()
	files["recipe.toml"] = recipe
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBadInputs: each mistake is one error line naming the file, a
// non-zero exit, and nothing new in the store.
func TestBadInputs(t *testing.T) {
	const unoHead = `name = "bad"
version = "1.0.0"
board = "arduino-uno"
toolchain = "avr-gcc-5.4"
sources = ["src/*.c"]
`
	bigC := `#include <avr/pgmspace.h>
#include <stdint.h>
// Two tables of 20000 bytes (one AVR object may not pass 32767 bytes):
// more than the Uno's 32256 bytes of application flash.
const uint8_t table1[20000] PROGMEM = {1, 2, 3};
const uint8_t table2[20000] PROGMEM = {4, 5, 6};
int main(void) {
	volatile uint8_t x = pgm_read_byte(&table1[12345]) + pgm_read_byte(&table2[12345]);
	(void)x;
	for (;;) {
	}
}
`
	okC := "int main(void) { for (;;) {} }\n"
	wrongSum := strings.Repeat("ab", 32)
	cases := []struct {
		name   string
		recipe string
		files  map[string]string
		want   []string // substrings of the error line
	}{
		{"unknown board", strings.Replace(unoHead, "arduino-uno", "arduino-unoo", 1), map[string]string{"src/main.c": okC},
			[]string{"recipe.toml:3:1", "unknown board"}},
		{"unknown toolchain", strings.Replace(unoHead, "avr-gcc-5.4", "avr-gcc-4.3", 1), map[string]string{"src/main.c": okC},
			[]string{"recipe.toml:4:1", "unknown toolchain"}},
		{"malformed toml", unoHead + "[build\ncflags = [\"-Os\"]\n", map[string]string{"src/main.c": okC},
			[]string{"recipe.toml:"}},
		{"glob matches nothing", unoHead, map[string]string{"src/main.cpp": okC},
			[]string{"recipe.toml", `"src/*.c"`, "matches no file"}},
		{"input hash mismatch", unoHead + "[[inputs]]\nname = \"blob\"\nsources = [\"file:blob.bin\"]\nsha256 = \"" + wrongSum + "\"\n",
			map[string]string{"src/main.c": okC, "blob.bin": "not what the recipe pins\n"},
			[]string{"blob", wrongSum, sha256Of("not what the recipe pins\n")}},
		{"program larger than flash", unoHead, map[string]string{"src/main.c": bigC},
			[]string{"recipe.toml", "does not fit", "32256"}},
		// 32400 bytes link (the ATmega328P has 32 KiB) but run into the
		// Uno's bootloader: kiln's own check against the board refuses it.
		{"program over the bootloader", unoHead, map[string]string{"src/main.c": strings.ReplaceAll(bigC, "20000", "16200")},
			[]string{"recipe.toml", "does not fit", "32256"}},
	}
	// One store for every case: each must leave it as it found it.
	s := newStore(t, "blink-uno")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bad")
			writeRecipe(t, dir, tc.recipe, tc.files)
			before := listStore(t, s)
			code, _, stderr := runKiln("build", dir, "--store", s.Root, "--out", filepath.Join(t.TempDir(), "out"))
			if code == 0 {
				t.Fatalf("kiln build succeeded")
			}
			var errLines []string
			for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
				if !strings.HasPrefix(l, "hint: ") {
					errLines = append(errLines, l)
				}
			}
			if len(errLines) != 1 || !strings.HasPrefix(errLines[0], "kiln: ") {
				t.Fatalf("want one error line, got:\n%s", stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(errLines[0], w) {
					t.Errorf("error %q does not contain %q", errLines[0], w)
				}
			}
			if !strings.Contains(errLines[0], dir) && !strings.Contains(errLines[0], "blob") {
				t.Errorf("error %q does not name the file", errLines[0])
			}
			if tc.name == "malformed toml" && !regexp.MustCompile(`recipe\.toml:\d+:\d+: `).MatchString(errLines[0]) {
				t.Errorf("error %q has no line:column", errLines[0])
			}
			t.Logf("%s", errLines[0])
			if after := listStore(t, s); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("the store changed: %v -> %v", before, after)
			}
		})
	}
}

func sha256Of(s string) string {
	dir, _ := os.MkdirTemp("", "sum")
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte(s), 0o644)
	sum, _ := recipes.HashFile(p)
	return sum
}

// TestTamperedEntryRefused: a store entry changed after it was written is
// refused by kiln build, whether it is the firmware itself or an input.
func TestTamperedEntryRefused(t *testing.T) {
	ctx := context.Background()
	t.Run("firmware", func(t *testing.T) {
		s := storeWith(t, sharedBuild(t, "blink-bluepill").StorePath)
		res := &firmware.Result{StorePath: filepath.Join(s.Root, filepath.Base(sharedBuild(t, "blink-bluepill").StorePath))}
		replaceFile(t, filepath.Join(res.StorePath, firmware.HEXName), []byte(":00000001FF\n"))
		_, err := firmware.Build(ctx, firmware.Options{Dir: recipeDir("blink-bluepill"), Store: s})
		if !errors.Is(err, store.ErrTampered) {
			t.Fatalf("build over a tampered entry: %v, want ErrTampered", err)
		}
		code, _, stderr := runKiln("build", recipeDir("blink-bluepill"), "--store", s.Root, "--out", filepath.Join(t.TempDir(), "out"))
		if code != 1 || !strings.Contains(stderr, "tampered") || !strings.Contains(stderr, firmware.HEXName) {
			t.Fatalf("kiln build: exit %d\n%s", code, stderr)
		}
	})
	t.Run("input", func(t *testing.T) {
		s := newStore(t, "blink-uno")
		var core string
		for _, name := range listStore(t, s) {
			if strings.HasSuffix(name, "-arduino-core-avr") {
				core = filepath.Join(s.Root, name)
			}
		}
		if core == "" {
			t.Fatalf("no arduino-core-avr entry in %v", listStore(t, s))
		}
		replaceFile(t, filepath.Join(core, "usr/share/arduino/hardware/arduino/avr/cores/arduino/wiring.c"), []byte("int evil;\n"))
		_, err := firmware.Build(ctx, firmware.Options{Dir: recipeDir("blink-uno"), Store: s})
		if !errors.Is(err, store.ErrTampered) {
			t.Fatalf("build with a tampered input: %v, want ErrTampered", err)
		}
	})
}

// replaceFile swaps a (read-only, maybe hard-linked) store file for new
// content without touching the file it was linked to.
func replaceFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
}

// TestNoSandbox: --no-sandbox builds on the host, says so in the manifest,
// and (its paths mapped to the sandbox's in the debug information) makes the
// same firmware as the sandbox.
func TestNoSandbox(t *testing.T) {
	sandboxed := sharedBuild(t, "blink-uno")
	s := newStore(t, "blink-uno")
	res, err := firmware.Build(context.Background(), firmware.Options{Dir: recipeDir("blink-uno"), Store: s, NoSandbox: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Hit || res.Manifest.Sandbox || len(res.Manifest.HostImpurities) == 0 {
		t.Fatalf("hit %v, manifest sandbox %v, impurities %v", res.Hit, res.Manifest.Sandbox, res.Manifest.HostImpurities)
	}
	a, b := readOutputs(t, sandboxed.StorePath), readOutputs(t, res.StorePath)
	for _, name := range []string{firmware.ELFName, firmware.HEXName, firmware.BINName} {
		if !bytes.Equal(a[name], b[name]) {
			t.Errorf("%s differs between the sandboxed and the host build", name)
		}
	}
}

// TestBuildJSON: `kiln build --json` prints one object with the
// derivation, the outputs and their hashes, the store path, hit and times;
// flags may follow the recipe directory.
func TestBuildJSON(t *testing.T) {
	built := sharedBuild(t, "blink-nucleo-f401re")
	out := filepath.Join(t.TempDir(), "out")
	code, stdout, stderr := runKiln("build", recipeDir("blink-nucleo-f401re"), "--store", shared.store.Root, "--out", out, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Derivation string `json:"derivation"`
		StorePath  string `json:"store_path"`
		Hit        bool   `json:"hit"`
		Outputs    map[string]struct {
			SHA256 string `json:"sha256"`
			Size   int64  `json:"size"`
		} `json:"outputs"`
		Durations map[string]float64 `json:"durations_ms"`
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value:\n%s", stdout)
	}
	if !got.Hit || got.Derivation != built.Derivation || got.StorePath != built.StorePath {
		t.Fatalf("hit %v, derivation %s, store path %s; want a hit on %s", got.Hit, got.Derivation, got.StorePath, built.StorePath)
	}
	for _, name := range []string{firmware.ELFName, firmware.HEXName, firmware.BINName, firmware.ManifestName} {
		sum, err := recipes.HashFile(filepath.Join(out, name))
		if err != nil || got.Outputs[name].SHA256 != sum {
			t.Errorf("%s: json sha256 %s, file %s (%v)", name, got.Outputs[name].SHA256, sum, err)
		}
	}
	if _, ok := got.Durations["total"]; !ok {
		t.Errorf("no durations: %v", got.Durations)
	}
}

// TestSandboxSeesOnlyItsMounts: a pre command in the sandbox cannot see
// files the host has in /tmp, /run, /dev/shm or $HOME, nor a unix socket;
// it cannot write the toolchain or its inputs; only /build (and its own
// /tmp) take writes, and / holds the sandbox's mounts alone.
func TestSandboxSeesOnlyItsMounts(t *testing.T) {
	dir := t.TempDir()
	probe, sum := buildProbe(t, dir)
	var markers []string
	for _, d := range []string{os.TempDir(), "/run", "/dev/shm", os.Getenv("HOME")} {
		if d == "" {
			continue
		}
		f, err := os.CreateTemp(d, "kiln-sandbox-marker-")
		if err != nil {
			t.Logf("no marker in %s: %v", d, err)
			continue
		}
		f.Close()
		t.Cleanup(func() { os.Remove(f.Name()) })
		markers = append(markers, f.Name())
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	markers = append(markers, sock)
	if len(markers) < 3 {
		t.Fatalf("only %d host markers could be made", len(markers))
	}
	args := `"$in/probe/probe", "look", "/build", "/toolchain", "/toolchain/usr", "/inputs/probe", "/"`
	for _, m := range markers {
		args += fmt.Sprintf(", %q", m)
	}
	rdir := writeProbeRecipe(t, dir, "look-probe", probe, sum, args, "", "", nil)
	_, err = firmware.Build(context.Background(), firmware.Options{Dir: rdir, Store: sharedStore(t)})
	var ce *firmware.CommandError
	if !errors.As(err, &ce) || !strings.Contains(ce.Output, "probe: look done") {
		t.Fatalf("the probe did not run: %v", err)
	}
	t.Logf("the sandbox, as the probe saw it:\n%s", ce.Output)
	want := []string{"writable: /build", "read-only: /toolchain", "read-only: /toolchain/usr", "read-only: /inputs/probe", "read-only: /"}
	for _, m := range markers {
		want = append(want, "hidden: "+m)
	}
	for _, w := range want {
		if !strings.Contains(ce.Output, w+"\n") {
			t.Errorf("the probe did not report %q", w)
		}
	}
	allowed := map[string]bool{"/build": true, "/dev": true, "/homeless": true, "/inputs": true, "/proc": true, "/tmp": true,
		"/toolchain": true, "/hostlib": true, "/lib64": true}
	for _, l := range strings.Split(ce.Output, "\n") {
		if r, ok := strings.CutPrefix(l, "root: "); ok && !allowed[r] {
			t.Errorf("the sandbox's / holds %s", r)
		}
	}
}

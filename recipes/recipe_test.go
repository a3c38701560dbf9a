package recipes

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"kiln.dev/kiln/boards"
)

const coreSHA = "357869fa1f5a122ea06f470b9a88d2e5d27dd52afb0de0578ecd1b72d6b5c8c4"

const goodRecipe = `name = "blink"
version = "1.0.0"
board = "arduino-uno"
toolchain = "avr-gcc-5.4"
sources = ["src/*.cpp", "src/*.c"]
files = ["src/*.h"]

[[inputs]]
name = "arduino-core-avr"
sources = ["deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"]
sha256 = "` + coreSHA + `"

[build]
cflags = ["-Os"]
cxxflags = ["-Os", "-fno-exceptions"]
defines = { F_CPU = "16000000L", DECIMAL_DIG = "__DECIMAL_DIG__" }
includes = ["$in/arduino-core-avr/usr/share/arduino/hardware/arduino/avr/cores/arduino", "$src/src"]
core_sources = ["$in/arduino-core-avr/usr/share/arduino/hardware/arduino/avr/cores/arduino/*.c"]
libs = ["m"]
`

// writeRecipe makes a recipe directory with the given recipe.toml and files.
func writeRecipe(t testing.TB, dir, recipe string, files map[string]string) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	must(t, os.WriteFile(filepath.Join(dir, FileName), []byte(recipe), 0o644))
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(body), 0o644))
	}
	return dir
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var blinkFiles = map[string]string{
	"src/blink.cpp": "#include \"blink.h\"\nvoid setup() {}\nvoid loop() {}\n",
	"src/util.c":    "int util(void) { return 1; }\n",
	"src/blink.h":   "#define LED 13\n",
}

func derive(t testing.TB, dir string) *Derivation {
	t.Helper()
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Derive()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLoad(t *testing.T) {
	dir := writeRecipe(t, "", goodRecipe, blinkFiles)
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "blink" || r.Kind != KindFirmware || r.Board != "arduino-uno" || r.Toolchain != "avr-gcc-5.4" {
		t.Errorf("recipe = %+v", r)
	}
	if r.Dir != dir || len(r.Inputs) != 1 || r.Inputs[0].Dir != dir {
		t.Errorf("dir %q, inputs %+v", r.Dir, r.Inputs)
	}
	if r2, err := Load(filepath.Join(dir, FileName)); err != nil {
		t.Errorf("Load of the recipe file: %v", err)
	} else if r2.Dir != dir {
		t.Errorf("Load of the recipe file: dir %q", r2.Dir)
	}
	if r.Build.Defines["DECIMAL_DIG"] != "__DECIMAL_DIG__" || len(r.Build.Libs) != 1 {
		t.Errorf("build = %+v", r.Build)
	}
	d, err := r.Derive()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range d.SourceFiles() {
		got = append(got, fmt.Sprintf("%s:%v", f.Path, f.Compile))
		if sum, _ := HashFile(filepath.Join(dir, f.Path)); sum != f.SHA256 {
			t.Errorf("%s: sha256 %s, file has %s", f.Path, f.SHA256, sum)
		}
	}
	if want := "src/blink.cpp:true src/blink.h:false src/util.c:true"; strings.Join(got, " ") != want {
		t.Errorf("source files %q, want %q", strings.Join(got, " "), want)
	}
	if d.Board.MCU != "atmega328p" || d.Toolchain.Name != "avr-gcc-5.4" || d.ToolchainHash != d.ToolchainDef().Hash() {
		t.Errorf("derivation board %s toolchain %+v", d.Board.MCU, d.Toolchain)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(d.Hash()) {
		t.Errorf("hash %q", d.Hash())
	}
	if strings.Contains(string(d.JSON()), dir) || strings.Contains(string(d.JSON()), "deb:") {
		t.Errorf("canonical JSON names the recipe dir or a source URL: %s", d.JSON())
	}
}

// TestBadRecipes: every bad input is a one-line error naming the recipe
// file (with line:column where the mistake has a place in the file).
func TestBadRecipes(t *testing.T) {
	swap := func(old, new string) string {
		if !strings.Contains(goodRecipe, old) {
			t.Fatalf("test bug: %q not in the recipe", old)
		}
		return strings.Replace(goodRecipe, old, new, 1)
	}
	cases := []struct {
		name, recipe string
		is           error
		want         string // regexp the message must match (after the file name)
	}{
		{"unknown board", swap(`board = "arduino-uno"`, `board = "arduino-unoo"`), boards.ErrUnknown, `:3:1: unknown board "arduino-unoo"`},
		{"unknown toolchain", swap(`toolchain = "avr-gcc-5.4"`, `toolchain = "avr-gcc-4.9"`), ErrUnknownToolchain, `:4:1: unknown toolchain "avr-gcc-4.9"`},
		{"malformed toml", swap(`version = "1.0.0"`, `version = "1.0.0`), ErrInvalid, `:2:\d+: invalid recipe: `},
		{"unknown top key", swap("files = ", "filez = "), ErrInvalid, `:6:1: invalid recipe: unknown key "filez"`},
		{"unknown build key", swap("cflags = ", "cflagz = "), ErrInvalid, `:14:1: invalid recipe: unknown key "build.cflagz"`},
		{"unknown input key", swap("sha256 = ", "sha265 = "), ErrInvalid, `:11:1: invalid recipe: unknown key "inputs.sha265"`},
		{"wrong type", swap(`cflags = ["-Os"]`, `cflags = "-Os"`), ErrInvalid, `:\d+:\d+: invalid recipe: .*cflags`},
		{"bad sha256", swap(coreSHA, "abc"), ErrInvalid, `sha256 "abc" is not 64`},
		{"bad source", swap(`deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1`, `ftp://x/y.deb`), ErrInvalid, `source "ftp://x/y.deb": want deb:`},
		{"deb without version", swap(`deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1`, `deb:arduino-core-avr`), ErrInvalid, `want deb:NAME=VERSION`},
		{"arch mismatch", swap(`board = "arduino-uno"`, `board = "nucleo-f401re"`), ErrInvalid, `toolchain avr-gcc-5.4 builds for avr but board nucleo-f401re is cortex-m`},
		{"unknown input ref", swap(`"$src/src"`, `"$in/arduino-core/usr"`), ErrInvalid, `names input "arduino-core", which the recipe does not declare`},
		{"escaping glob", swap(`"src/*.c"]`, `"../*.c"]`), ErrInvalid, `leaves the recipe directory`},
		{"absolute glob", swap(`"src/*.c"]`, `"/etc/*"]`), ErrInvalid, `must be relative`},
		{"bad define", swap(`F_CPU = `, `"F-CPU" = `), ErrInvalid, `define "F-CPU" is not a C identifier`},
		{"missing name", swap(`name = "blink"`, ``), ErrInvalid, `: invalid recipe: missing name`},
		{"unknown kind", swap(`name = "blink"`, "name = \"blink\"\nkind = \"rocket\""), ErrInvalid, `unknown kind "rocket"`},
		{"duplicate input", goodRecipe + "\n[[inputs]]\nname = \"arduino-core-avr\"\nsources = [\"file:x\"]\nsha256 = \"" + coreSHA + "\"\n", ErrInvalid, `listed twice`},
		{"empty pre", goodRecipe + "pre = [[]]\n", ErrInvalid, `pre command 1 is empty`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeRecipe(t, "", c.recipe, blinkFiles)
			_, err := Load(dir)
			if err == nil {
				t.Fatal("loaded")
			}
			msg := err.Error()
			file := filepath.Join(dir, FileName)
			if !strings.HasPrefix(msg, file+":") {
				t.Errorf("error does not start with the file name %s: %s", file, msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if !errors.Is(err, c.is) {
				t.Errorf("error %q is not %v", msg, c.is)
			}
			if !regexp.MustCompile(c.want).MatchString(strings.TrimPrefix(msg, file)) {
				t.Errorf("error %q does not match %q", msg, c.want)
			}
		})
	}
}

func TestGlobMatchesNothing(t *testing.T) {
	files := map[string]string{"src/blink.cpp": "x", "src/blink.h": "y"} // no src/*.c
	dir := writeRecipe(t, "", goodRecipe, files)
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Derive()
	if !errors.Is(err, ErrNoMatch) {
		t.Fatalf("err = %v, want ErrNoMatch", err)
	}
	want := filepath.Join(dir, FileName) + `: source glob "src/*.c" matches no file`
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	// A directory matching a glob is not a source file.
	must(t, os.MkdirAll(filepath.Join(dir, "src", "dir.c"), 0o755))
	if _, err := r.Derive(); !errors.Is(err, ErrNoMatch) {
		t.Errorf("a directory satisfied the glob: %v", err)
	}
}

func TestDerivationHash(t *testing.T) {
	base := derive(t, writeRecipe(t, "", goodRecipe, blinkFiles)).Hash()

	t.Run("recipe directory does not matter", func(t *testing.T) {
		deep := filepath.Join(t.TempDir(), "some", "other", "checkout")
		must(t, os.MkdirAll(deep, 0o755))
		if h := derive(t, writeRecipe(t, deep, goodRecipe, blinkFiles)).Hash(); h != base {
			t.Errorf("hash %s at %s, %s elsewhere", h, deep, base)
		}
	})
	t.Run("one byte of one source changes it", func(t *testing.T) {
		for _, name := range []string{"src/blink.cpp", "src/blink.h", "src/util.c"} {
			files := map[string]string{}
			for k, v := range blinkFiles {
				files[k] = v
			}
			b := []byte(files[name])
			b[len(b)/2] ^= 1
			files[name] = string(b)
			if h := derive(t, writeRecipe(t, "", goodRecipe, files)).Hash(); h == base {
				t.Errorf("flipping a bit of %s did not change the hash", name)
			}
		}
	})
	mirror := `sources = ["deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"]`
	same := map[string]string{
		"added mirror": strings.Replace(goodRecipe, mirror,
			`sources = ["deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1", "https://mirror.example/core.deb", "file:core.deb"]`, 1),
		"reordered mirrors": strings.Replace(goodRecipe, mirror,
			`sources = ["file:core.deb", "https://mirror.example/core.deb", "deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"]`, 1),
		"only another mirror": strings.Replace(goodRecipe, mirror, `sources = ["https://other.example/x.deb"]`, 1),
		"comments and layout": "# a comment\n" + strings.ReplaceAll(goodRecipe, " = ", "   =   "),
		"defines in another order": strings.Replace(goodRecipe, `{ F_CPU = "16000000L", DECIMAL_DIG = "__DECIMAL_DIG__" }`,
			`{ DECIMAL_DIG = "__DECIMAL_DIG__", F_CPU = "16000000L" }`, 1),
	}
	for name, recipe := range same {
		t.Run(name+" does not change it", func(t *testing.T) {
			if h := derive(t, writeRecipe(t, "", recipe, blinkFiles)).Hash(); h != base {
				t.Errorf("hash changed: %s, was %s", h, base)
			}
		})
	}
	differ := map[string]string{
		"input hash":   strings.Replace(goodRecipe, coreSHA, strings.Repeat("a", 64), 1),
		"cflags":       strings.Replace(goodRecipe, `cflags = ["-Os"]`, `cflags = ["-O2"]`, 1),
		"board":        strings.Replace(goodRecipe, `board = "arduino-uno"`, `board = "arduino-nano"`, 1),
		"version":      strings.Replace(goodRecipe, `version = "1.0.0"`, `version = "1.0.1"`, 1),
		"a define":     strings.Replace(goodRecipe, `"16000000L"`, `"8000000L"`, 1),
		"input subdir": strings.Replace(goodRecipe, `sha256 = "`+coreSHA+`"`, `sha256 = "`+coreSHA+`"`+"\nsubdir = \"usr\"", 1),
	}
	for name, recipe := range differ {
		t.Run(name+" changes it", func(t *testing.T) {
			if h := derive(t, writeRecipe(t, "", recipe, blinkFiles)).Hash(); h == base {
				t.Errorf("hash did not change")
			}
		})
	}
	t.Run("renaming a source changes it", func(t *testing.T) {
		files := map[string]string{"src/blink2.cpp": blinkFiles["src/blink.cpp"], "src/util.c": blinkFiles["src/util.c"], "src/blink.h": blinkFiles["src/blink.h"]}
		if h := derive(t, writeRecipe(t, "", goodRecipe, files)).Hash(); h == base {
			t.Errorf("hash did not change")
		}
	})
	t.Run("stable across loads", func(t *testing.T) {
		dir := writeRecipe(t, "", goodRecipe, blinkFiles)
		for range 5 {
			if h := derive(t, dir).Hash(); h != base {
				t.Fatalf("hash %s, was %s", h, base)
			}
		}
	})
}

func TestLinkerScriptIsHashed(t *testing.T) {
	recipe := `name = "bare"
version = "1"
board = "nucleo-f401re"
toolchain = "arm-none-eabi-12.2"
sources = ["*.c"]
[build]
linker_script = "$src/ld/f401.ld"
`
	files := map[string]string{"main.c": "int main(void) { return 0; }\n", "ld/f401.ld": "MEMORY {}\n"}
	d := derive(t, writeRecipe(t, "", recipe, files))
	paths := ""
	for _, f := range d.SourceFiles() {
		paths += f.Path + " "
	}
	if paths != "ld/f401.ld main.c " {
		t.Errorf("source files %q", paths)
	}
	files["ld/f401.ld"] = "MEMORY { }\n"
	if derive(t, writeRecipe(t, "", recipe, files)).Hash() == d.Hash() {
		t.Error("changing the linker script did not change the hash")
	}
	delete(files, "ld/f401.ld")
	r, err := Load(writeRecipe(t, "", recipe, files))
	must(t, err)
	if _, err := r.Derive(); !errors.Is(err, ErrNoMatch) {
		t.Errorf("missing linker script: %v", err)
	}
}

// TestShippedRecipes loads and derives every example recipe in this
// directory (recipes/*/recipe.toml).
func TestShippedRecipes(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join("*", FileName))
	if len(dirs) == 0 {
		t.Skip("no example recipes in this checkout yet")
	}
	for _, f := range dirs {
		dir := filepath.Dir(f)
		t.Run(dir, func(t *testing.T) {
			r, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if r.Name != dir {
				t.Errorf("recipe in %s is named %q", dir, r.Name)
			}
			if _, err := r.Derive(); err != nil {
				t.Fatal(err)
			}
			// Every deb: pin keeps working after Debian's main archive
			// drops its version: the snapshot archive's copy follows it.
			for _, in := range r.Inputs {
				if _, ok := in.DebPin(); ok && !slices.ContainsFunc(in.Sources, IsSnapshotSource) {
					t.Errorf("input %s: a deb: pin without a snapshot fallback (run kiln lock --pins recipes/%s)", in.Name, dir)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodRecipe))
	f.Add([]byte("name = \"x\"\n[build]\npre = [[\"$in/a/b\"]]\n"))
	f.Add([]byte("[[inputs]]\nname='a'\nsources=['file:x']\nsha256='" + coreSHA + "'"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("fuzz/recipe.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz/recipe.toml") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		if r.Name == "" || r.Board == "" {
			t.Errorf("accepted a recipe without name or board: %+v", r)
		}
	})
}

// testKind is a kind with one table of its own, for TestRegisterKind.
type testKind struct {
	Size int    `toml:"size" json:"size"`
	File string `toml:"file" json:"file"`
	Sum  string `json:"sum,omitempty"`
}

func (k testKind) DeriveKind(r *Recipe) (any, error) {
	sum, err := HashFile(filepath.Join(r.Dir, k.File))
	k.Sum = sum
	return k, err
}

func init() {
	RegisterKind("test-kind", func(r *Recipe, md *toml.MetaData, ext map[string]toml.Primitive) (any, error) {
		var k testKind
		if p, ok := ext["disk"]; ok {
			if err := md.PrimitiveDecode(p, &k); err != nil {
				return nil, err
			}
		}
		if k.Size <= 0 {
			return nil, fmt.Errorf("%w: disk.size must be positive", ErrInvalid)
		}
		return k, nil
	})
}

// TestRegisterKind: another kind of recipe reads its own tables; keys it
// does not read are still unknown keys; its derived data is in the hash.
func TestRegisterKind(t *testing.T) {
	head := "name = \"img\"\nversion = \"1\"\nboard = \"rpi-4b\"\nkind = \"test-kind\"\n"
	dir := writeRecipe(t, "", head+"[disk]\nsize = 4\nfile = \"config.txt\"\n", map[string]string{"config.txt": "a=1\n"})
	d := derive(t, dir)
	if k, ok := d.Extra.(testKind); !ok || k.Size != 4 || k.Sum == "" {
		t.Errorf("extra = %#v", d.Extra)
	}
	os.WriteFile(filepath.Join(dir, "config.txt"), []byte("a=2\n"), 0o644)
	if derive(t, dir).Hash() == d.Hash() {
		t.Error("a file the kind hashes did not change the hash")
	}
	for name, body := range map[string]string{
		"unknown key in the kind's table":   head + "[disk]\nsize = 4\nfile = \"config.txt\"\ncolour = 1\n",
		"unread table":                      head + "[disk]\nsize = 4\nfile = \"config.txt\"\n[partitions]\nboot = 1\n",
		"kind's own validation":             head + "[disk]\nsize = 0\n",
		"kind's table in a firmware recipe": strings.Replace(goodRecipe, "[build]", "[disk]\nsize = 4\n[build]", 1),
	} {
		_, err := Load(writeRecipe(t, "", body, map[string]string{"config.txt": "", "src/blink.cpp": "", "src/util.c": "", "src/blink.h": ""}))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// ** would silently behave as * (path.Match): it is refused, naming the glob.
func TestDoubleStarRefused(t *testing.T) {
	src := strings.Replace(goodRecipe, `"src/*.c"`, `"src/**/*.c"`, 1)
	if src == goodRecipe {
		t.Fatal("goodRecipe has no src/*.c glob to change")
	}
	dir := writeRecipe(t, "", src, blinkFiles)
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), `glob "src/**/*.c": ** is not supported`) {
		t.Fatalf("Load = %v", err)
	}
}

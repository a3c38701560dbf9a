package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/debian/debtest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

const pinsRecipe = `# An appliance whose kernel is a deb: pin.
name = "pins-test"
version = "1.0.0"
kind = "image"
board = "rpi-3b"

[[inputs]]
name = "hello"
sources = ["deb:kiln-hello:arm64=1.0-1"] # moved by kiln lock --pins --update
sha256 = "SUM"

[image]
table = "mbr"
size = "16MiB"
source_date_epoch = 1751414400

[[image.partitions]]
name = "data"
fs = "ext4"
size = "8MiB"
`

const pinsToolchain = `# A toolchain closure of one package.
name = "pins-tc"
arch = "avr"
prefix = "avr-"
bin_dir = "usr/bin"

[[packages]]
name = "kiln-cc"
sources = ["deb:kiln-cc:arm64=2.0-1"]
sha256 = "SUM"
`

// TestLockPins: kiln lock --pins gives every deb: pin of a recipe and a
// toolchain file its snapshot fallback, keeps a current pin, refuses to
// move a gone one without --update, and with --update moves each to the
// archive's version, printing old -> new versions and sha256s. The archive
// is a local repository whose index the test changes.
func TestLockPins(t *testing.T) {
	debtest.Need(t, "apt-get", "apt-cache", "dpkg-scanpackages")
	repo := filepath.Join(t.TempDir(), "debian")
	hello := debtest.Deb{Name: "kiln-hello", Version: "1.0-1"}
	cc := debtest.Deb{Name: "kiln-cc", Version: "2.0-1"}
	debtest.Repo(t, repo, "bookworm", []debtest.Deb{hello, cc})
	sum := func(d debtest.Deb) string {
		s, err := store.HashFile(filepath.Join(repo, "pool/main", d.Name[:1], d.Name, d.FileName()))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	etc, dir, st := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(etc, "sources.list"), []byte("deb [trusted=yes] file:"+repo+" bookworm main\n"), 0o644)
	env := []string{"env", "KILN_APT_SOURCES=" + etc}
	recipe := strings.ReplaceAll(pinsRecipe, "SUM", sum(hello))
	tcText := strings.ReplaceAll(pinsToolchain, "SUM", sum(cc))
	tc := filepath.Join(dir, "pins-tc.toml")
	os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(recipe), 0o644)
	os.WriteFile(tc, []byte(tcText), 0o644)
	h1 := runKiln(t, nil, "hash", dir)

	// Fallbacks: the snapshot URL of each pinned file, at the Release
	// file's Date (1 Dec 2026 00:00 UTC) + 12 h; comments and layout kept.
	res := runKiln(t, env, "lock", "--pins", "--store", st, dir, tc)
	snapHello := "https://snapshot.debian.org/archive/debian/20261201T120000Z/pool/main/k/kiln-hello/kiln-hello_1.0-1_arm64.deb"
	if res.code != 0 || !strings.Contains(res.stdout, "fallback   kiln-hello:arm64 1.0-1 "+snapHello) || !strings.Contains(res.stdout, "pins-tc.toml written") {
		t.Fatalf("lock --pins: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "recipe.toml"))
	want := strings.Replace(recipe, `["deb:kiln-hello:arm64=1.0-1"]`, `["deb:kiln-hello:arm64=1.0-1", "`+snapHello+`"]`, 1)
	if string(got) != want {
		t.Fatalf("recipe:\n%s\nwant:\n%s", got, want)
	}
	if h := runKiln(t, nil, "hash", dir); h.stdout != h1.stdout {
		t.Fatal("a fallback source changed the derivation")
	}
	// Nothing to do the second time.
	if res := runKiln(t, env, "lock", "--pins", "--store", st, dir, tc); res.code != 0 || !strings.Contains(res.stdout, "every deb: pin is current") {
		t.Fatalf("again: %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	// A point release: both versions leave the archive.
	os.RemoveAll(filepath.Join(repo, "pool"))
	hello.Version, cc.Version = "1.1-1", "2.0-2"
	debtest.Repo(t, repo, "bookworm", []debtest.Deb{hello, cc})
	before, _ := os.ReadFile(tc)
	res = runKiln(t, env, "lock", "--pins", "--store", st, dir, tc)
	if res.code != 1 || !strings.Contains(res.stdout, "gone       kiln-hello:arm64 1.0-1: no longer in the archive") ||
		!strings.Contains(res.stderr, "kiln: lock: kiln-hello:arm64=1.0-1, kiln-cc:arm64=2.0-1: pinned version not in the archive") ||
		!strings.Contains(res.stderr, "hint: kiln lock --pins --update") {
		t.Fatalf("gone: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if after, _ := os.ReadFile(tc); string(after) != string(before) {
		t.Fatal("a gone pin changed its file")
	}
	// kiln fetch of a pin that has no fallback: gone, said first, one line
	// and the fix as a hint.
	os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(recipe), 0o644)
	res = runKiln(t, env, "fetch", "--store", t.TempDir(), dir)
	if lines := strings.Split(strings.TrimSpace(res.stderr), "\n"); res.code != 1 ||
		!strings.HasPrefix(lines[len(lines)-2], "kiln: fetch: hello: pinned version is gone from every source (deb:kiln-hello:arm64=1.0-1: ") ||
		!strings.Contains(lines[len(lines)-2], "was not found") || lines[len(lines)-1] != "hint: move the pin to a version the archive has: kiln lock --pins --update RECIPE_DIR (a toolchain: recipes/toolchains/NAME.toml); a root filesystem: kiln lock --update RECIPE_DIR" {
		t.Fatalf("fetch of a gone pin: %d\n%s", res.code, res.stderr)
	}
	res = runKiln(t, env, "lock", "--pins", "--update", "--json", "--store", st, dir, tc)
	var rep pinsReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || res.code != 0 || len(rep.Changes) != 2 || len(rep.Written) != 2 {
		t.Fatalf("--update: %d %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	if c := rep.Changes[0]; c.Kind != "upgraded" || c.Package != "kiln-hello:arm64" || c.Old != "1.0-1" || c.New != "1.1-1" || c.NewSHA256 != sum(hello) {
		t.Fatalf("change %+v", c)
	}
	got, _ = os.ReadFile(filepath.Join(dir, "recipe.toml"))
	snapNew := "https://snapshot.debian.org/archive/debian/20261201T120000Z/pool/main/k/kiln-hello/kiln-hello_1.1-1_arm64.deb"
	if !strings.Contains(string(got), `sources = ["deb:kiln-hello:arm64=1.1-1", "`+snapNew+`"] # moved by kiln lock --pins --update`) ||
		!strings.Contains(string(got), `sha256 = "`+sum(hello)+`"`) || !strings.HasPrefix(string(got), "# An appliance") {
		t.Fatalf("recipe after --update:\n%s", got)
	}
	if tcNow, _ := os.ReadFile(tc); !strings.Contains(string(tcNow), `"deb:kiln-cc:arm64=2.0-2"`) || !strings.Contains(string(tcNow), sum(cc)) {
		t.Fatalf("toolchain after --update:\n%s", tcNow)
	}
	if h := runKiln(t, nil, "hash", dir); h.code != 0 || h.stdout == h1.stdout {
		t.Fatalf("the moved pin did not change the derivation: %s", h.stderr)
	}
	// The text form, for the record of what a maintainer sees; without
	// --pins, as no argument is an image recipe with [image.rootfs].
	os.WriteFile(tc, before, 0o644)
	res = runKiln(t, env, "lock", "--update", "--store", st, tc)
	if res.code != 0 || !strings.Contains(res.stdout, "upgraded   kiln-cc:arm64 2.0-1 -> 2.0-2 (sha256 ") {
		t.Fatalf("text: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// TestFetchHintGone: the two ways a pinned version goes missing get
// different fixes.
func TestFetchHintGone(t *testing.T) {
	var h *hinted
	if err := fetchHint(fmt.Errorf("fetch: x: %w", fetch.ErrGone)); !errors.As(err, &h) || len(h.hints) != 1 || !strings.Contains(h.hints[0], "kiln lock --pins --update") {
		t.Fatalf("gone: %v", err)
	}
	if err := fetchHint(fmt.Errorf("fetch: x: %w", fetch.ErrPartlyGone)); !errors.As(err, &h) || len(h.hints) != 2 || !strings.Contains(h.hints[0], "check the network") || !strings.Contains(h.hints[1], "kiln lock --pins --update") {
		t.Fatalf("partly gone: %v", err)
	}
}

// pinFileOf writes text to dir/name with mode 0640 and loads it as kiln
// lock --pins does.
func pinFileOf(t *testing.T, dir, name, text string) pinFile {
	t.Helper()
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	arg := file
	if name == "recipe.toml" {
		arg = dir
	}
	pf, err := loadPinFile(arg)
	if err != nil {
		t.Fatal(err)
	}
	return pf
}

// onlyFile fails unless dir holds just name (no temporary file left).
func onlyFile(t *testing.T, dir, name string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != name {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s holds %v, want only %s", dir, names, name)
	}
}

// TestRewritePinFile: kiln lock --pins replaces a file only with text that
// parses as the same kind of file and holds exactly the pins intended;
// otherwise the file is left byte for byte as it was (and no temporary file
// stays beside it).
func TestRewritePinFile(t *testing.T) {
	sumA, sumB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	recipe := strings.ReplaceAll(pinsRecipe, "SUM", sumA)
	snap := "https://snapshot.debian.org/archive/debian/20261201T120000Z/pool/main/k/kiln-hello/kiln-hello_1.1-1_arm64.deb"
	moved := recipes.PinEdit{Old: "deb:kiln-hello:arm64=1.0-1", OldSHA256: sumA,
		Sources: []string{"deb:kiln-hello:arm64=1.1-1", snap}, SHA256: sumB}

	t.Run("moved", func(t *testing.T) {
		dir := t.TempDir()
		pf := pinFileOf(t, dir, "recipe.toml", recipe)
		if err := rewritePinFile(pf, []recipes.PinEdit{moved}); err != nil {
			t.Fatal(err)
		}
		r, err := recipes.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if in := r.Inputs[0]; in.SHA256 != sumB || strings.Join(in.Sources, " ") != "deb:kiln-hello:arm64=1.1-1 "+snap {
			t.Errorf("input after the rewrite: %+v", in)
		}
		if fi, _ := os.Stat(pf.path); fi.Mode().Perm() != 0o640 {
			t.Errorf("mode %v, want the file's 0640", fi.Mode().Perm())
		}
		onlyFile(t, dir, "recipe.toml")
	})

	refused := func(t *testing.T, pf pinFile, edit recipes.PinEdit, why string) {
		t.Helper()
		before, _ := os.ReadFile(pf.path)
		err := rewritePinFile(pf, []recipes.PinEdit{edit})
		if !errors.Is(err, recipes.ErrRewrite) || !strings.Contains(err.Error(), why) {
			t.Errorf("err = %v, want ErrRewrite saying %q", err, why)
		}
		if after, _ := os.ReadFile(pf.path); string(after) != string(before) {
			t.Errorf("a refused rewrite changed %s:\n%s", pf.path, after)
		}
		onlyFile(t, filepath.Dir(pf.path), filepath.Base(pf.path))
	}

	// A sha256 from a hostile or broken archive index: the text edit goes
	// through, the recipe it makes does not parse.
	t.Run("new text does not parse", func(t *testing.T) {
		dir := t.TempDir()
		pf := pinFileOf(t, dir, "recipe.toml", recipe)
		bad := moved
		bad.SHA256 = "0123"
		if _, err := recipes.RewritePins(pf.path, []byte(recipe), []recipes.PinEdit{bad}); err != nil {
			t.Fatalf("the text edit itself is refused (%v): this case no longer tests the re-parse", err)
		}
		refused(t, pf, bad, "does not parse")
	})

	// The only one-line sources array holding the pin is inside a
	// multi-line string: the text edit changes the string, the pin stays.
	t.Run("edit misses the pin", func(t *testing.T) {
		dir := t.TempDir()
		tc := `name = "pins-tc"
arch = "avr"
prefix = "avr-"
bin_dir = "usr/bin"
version = """
sources = ["deb:kiln-cc:arm64=2.0-1"]
"""

[[packages]]
name = "kiln-cc"
sources = [
  "deb:kiln-cc:arm64=2.0-1",
]
sha256 = "` + sumA + `"
`
		pf := pinFileOf(t, dir, "pins-tc.toml", tc)
		fallback := recipes.PinEdit{Old: "deb:kiln-cc:arm64=2.0-1", OldSHA256: sumA,
			Sources: []string{"deb:kiln-cc:arm64=2.0-1", snap}, SHA256: sumA}
		out, err := recipes.RewritePins(pf.path, []byte(tc), []recipes.PinEdit{fallback})
		if err != nil || string(out) == tc {
			t.Fatalf("the text edit itself is refused or empty (%v): this case no longer tests the pin check", err)
		}
		refused(t, pf, fallback, "kiln-cc sources")
	})

	// The file was edited by hand while the pins were being resolved.
	t.Run("changed meanwhile", func(t *testing.T) {
		dir := t.TempDir()
		pf := pinFileOf(t, dir, "recipe.toml", recipe)
		os.WriteFile(pf.path, []byte(strings.Replace(recipe, `name = "hello"`, `name = "hello2"`, 1)), 0o640)
		refused(t, pf, moved, "changed while its pins were resolved")
	})
}

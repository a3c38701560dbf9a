package kiln_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln"
	"kiln.dev/kiln/recipes"
)

// Every package that shapes outputs is covered by the builder digest.
func TestBuilderSourcesCoverOutputPackages(t *testing.T) {
	have := map[string]bool{}
	for _, f := range kiln.BuilderSources() {
		have[filepath.Dir(f)] = true
		if strings.HasSuffix(f, "_test.go") {
			t.Errorf("%s: test files do not shape outputs", f)
		}
	}
	for _, dir := range []string{"firmware", "firmware/arduino", "image", "image/recipebuild", "image/rootfs", "flash", "internal/fetch", "recipes"} {
		if !have[dir] {
			t.Errorf("the builder digest does not cover %s", dir)
		}
	}
	if d := kiln.BuilderDigest(); len(d) != 64 {
		t.Errorf("digest %q", d)
	}
}

// The derivation names the builder's code: a copy of the tree gives the
// same derivation hash, and the same copy with one flag kiln adds changed
// (-mmcu for AVR) gives another, with no format number bumped by hand.
func TestBuilderDigestMovesWithTheFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kiln twice")
	}
	r, err := recipes.Load("recipes/blink-uno")
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Derive()
	if err != nil {
		t.Fatal(err)
	}
	want := d.Hash()

	tree := filepath.Join(t.TempDir(), "kiln")
	files, err := exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	for _, f := range strings.Split(strings.TrimSpace(string(files)), "\n") {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // deleted in the work tree, or a directory (submodule)
		}
		dst := filepath.Join(tree, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hash := func() string {
		t.Helper()
		bin := filepath.Join(t.TempDir(), "kiln")
		build := exec.Command("go", "build", "-o", bin, "./cmd/kiln")
		build.Dir = tree
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build in the copy: %v\n%s", err, out)
		}
		cmd := exec.Command(bin, "hash", "recipes/blink-uno")
		cmd.Dir = tree
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kiln hash: %v\n%s", err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	if got := hash(); got != want {
		t.Fatalf("a copy of the tree derives %s, this tree %s", got, want)
	}
	src := filepath.Join(tree, "firmware", "build.go")
	code, _ := os.ReadFile(src)
	patched := bytes.Replace(code, []byte(`"-mmcu=" + b.board.MCU}`), []byte(`"-mmcu=" + b.board.MCU, "-mcall-prologues"}`), 1)
	if bytes.Equal(patched, code) {
		t.Fatal("firmware/build.go no longer adds -mmcu as this test expects: update the patch")
	}
	os.WriteFile(src, patched, 0o644)
	got := hash()
	if got == want {
		t.Fatalf("adding -mcall-prologues to the flags kiln adds left the derivation hash at %s", got)
	}
	t.Logf("derivation %s, with the patched flags %s", want, got)
}

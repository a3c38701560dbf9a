package beneath

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestOpenBeneath(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(root, "a", "b", "f"), []byte("in"), 0o644)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("out"), 0o644)
	links := map[string]string{
		"inside":   "a/b/f",            // stays inside: allowed
		"updown":   "a/../a/b",         // stays inside: allowed
		"abs":      "/",                // absolute: refused
		"up":       "../secret",        // climbs out: refused
		"a/deep":   "../../secret",     // climbs out from below: refused
		"a/b/self": "../../../root/a",  // leaves and comes back: refused (RESOLVE_BENEATH)
		"hostroot": filepath.Join(dir), // absolute into the parent: refused
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		rel    string
		escape bool
	}{
		{"a/b/f", false}, {"inside", false}, {"updown/f", false}, {".", false},
		{"abs", true}, {"abs/etc/passwd", true}, {"up", true}, {"a/deep", true}, {"a/b/self", true},
		{"hostroot/secret", true}, {"../secret", true}, {"/etc/passwd", true},
	} {
		f, err := Open(root, c.rel, 0)
		if f != nil {
			f.Close()
		}
		if got := errors.Is(err, ErrEscapes); got != c.escape {
			t.Errorf("Open(%q): %v, want escape %v", c.rel, err, c.escape)
		}
		if !c.escape && err != nil {
			t.Errorf("Open(%q): %v", c.rel, err)
		}
	}
	p, err := Resolve(root, "updown/f")
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(filepath.Join(root, "a", "b", "f"))
	if p != real {
		t.Errorf("Resolve: %s, want %s", p, real)
	}
}

package firmware

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/internal/store"
)

// TestVerifyStamp: a verified entry gets a stamp that spares the next
// re-hash, and any change to a file — even in place, same size, old mtime
// restored — makes the next verification a full one that finds it.
func TestVerifyStamp(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Add("0123456789abcdef0123456789abcdef", "tool", func(dir string) error {
		if err := os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "usr/bin/cc"), []byte("compiler v1"), 0o755)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Chmod(filepath.Join(p, "usr/bin"), 0o755)
		os.Chmod(filepath.Join(p, "usr"), 0o755)
		os.Chmod(p, 0o755)
	})
	if err := verifyEntry(s, p); err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(s.Root, verifiedDir, filepath.Base(p))
	if _, err := os.Stat(stamp); err != nil {
		t.Fatalf("no stamp after a full verification: %v", err)
	}
	if err := verifyEntry(s, p); err != nil {
		t.Fatalf("second verification: %v", err)
	}

	cc := filepath.Join(p, "usr/bin/cc")
	st, err := os.Stat(cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cc, []byte("compiler v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Hide the change as well as a user can: same size, same mode, old mtime.
	if err := os.Chmod(cc, st.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(cc, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := verifyEntry(s, p); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("verification after an in-place change: %v, want ErrTampered", err)
	}
	if _, err := os.Stat(stamp); !os.IsNotExist(err) {
		t.Fatalf("the stamp of a tampered entry is still there (%v)", err)
	}
}

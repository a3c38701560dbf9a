package firmware

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/store"
)

// verifiedDir, inside the store root, holds one stamp per store entry that
// passed a full verification: the hash of every file's inode, size, mode,
// mtime and ctime at that moment. Any change to a file (content, mode,
// replacement) changes its ctime, which no user can set, so a matching stamp
// stands for a full re-hash — as git's index does for the work tree. It
// keeps a build from re-hashing a toolchain of thousands of files each time.
const verifiedDir = ".verified"

// verifyEntry verifies the store entry at path (store.Verify), skipping the
// re-hash when nothing in it changed since it last verified.
func verifyEntry(s *store.Store, path string) error {
	snap, err := statSnapshot(path)
	if err != nil {
		return fmt.Errorf("firmware: %s: %w", filepath.Base(path), err)
	}
	stamp := filepath.Join(s.Root, verifiedDir, filepath.Base(path))
	if b, err := os.ReadFile(stamp); err == nil && string(b) == snap {
		return nil
	}
	if err := s.Verify(path); err != nil {
		os.Remove(stamp)
		return err
	}
	// The stamp is a cache: failing to write it costs time, not safety.
	if os.MkdirAll(filepath.Dir(stamp), 0o755) == nil {
		tmp := fmt.Sprintf("%s.%d.tmp", stamp, os.Getpid())
		if os.WriteFile(tmp, []byte(snap), 0o644) == nil {
			if os.Rename(tmp, stamp) != nil {
				os.Remove(tmp)
			}
		}
	}
	return nil
}

// statSnapshot hashes the relative path of everything under root and the
// inode, size, mode, mtime and ctime of every file and symlink, in walk
// (lexical) order. Directories count by name only (store.Verify checks
// their content, not their modes), so the same files hard-linked into
// another store keep their stamp.
func statSnapshot(root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			fmt.Fprintf(h, "%s/\n", rel)
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%o\x00%d.%d\x00%d.%d\n", rel, st.Ino, st.Size, st.Mode,
			st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// StoreKey is the store key of a firmware derivation: the derivation hash
// for a sandboxed build, and another key for a --no-sandbox build, so that
// one never satisfies a lookup of the other.
func StoreKey(derivation string, sandboxed bool) string {
	if sandboxed {
		return derivation
	}
	sum := sha256.Sum256([]byte("kiln-firmware-no-sandbox\x00" + derivation))
	return hex.EncodeToString(sum[:])
}

// checkEntry checks a verified store entry's outputs against its
// manifest.json: the derivation and sandbox it names, and every output's
// hash against the entry's (store.CheckOutputs). It returns the manifest.
func checkEntry(dir string, entry *store.Manifest, derivation string, sandboxed bool) (*Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if m.Derivation != derivation {
		return nil, fmt.Errorf("%s names derivation %s", ManifestName, m.Derivation)
	}
	if m.Sandbox != sandboxed {
		return nil, fmt.Errorf("%s says sandbox %v, want %v", ManifestName, m.Sandbox, sandboxed)
	}
	outs := map[string]string{}
	for name, o := range m.Outputs {
		outs[name] = o.SHA256
	}
	if err := store.CheckOutputs(entry, outs, ManifestName); err != nil {
		return nil, err
	}
	return m, nil
}

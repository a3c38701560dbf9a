package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/recipes"
)

// debFileKey names the store entry that keeps a .deb whole (not unpacked
// as Input keeps it): a key of its own, so the two forms never collide.
func debFileKey(in recipes.Input) string {
	sum := sha256.Sum256([]byte("kiln deb file\n" + in.SHA256 + "\n" + in.StoredName()))
	return hex.EncodeToString(sum[:])
}

// DebFilePath returns the stored .deb of in if it is in the store. It uses
// no network.
func (f *Fetcher) DebFilePath(in recipes.Input) (string, bool) {
	p, ok := f.Store.Lookup(debFileKey(in), in.Name)
	return filepath.Join(p, in.StoredName()), ok
}

// DebFile fetches the .deb in pins and returns the path of the package file
// itself in the store: assembling a root filesystem needs its control
// archive and maintainer scripts as well as its data. Sources are tried in
// order (a lock's mirror, then the snapshot archive) and each result is
// checked against the pinned sha256 before it is stored; when every source
// says it no longer has the file, the error wraps ErrGone.
func (f *Fetcher) DebFile(ctx context.Context, in recipes.Input) (string, error) {
	if p, ok := f.DebFilePath(in); ok {
		return p, nil
	}
	if f.Substitute != nil {
		if p, ok := f.Substitute(ctx, debFileKey(in), in.Name); ok {
			return filepath.Join(p, in.StoredName()), nil
		}
	}
	dl, err := f.download(ctx, in)
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(filepath.Dir(dl))
	if !IsDeb(dl) {
		return "", fmt.Errorf("fetch: %s: %w: not a .deb", in.Name, ErrBadArchive)
	}
	p, err := f.Store.Add(debFileKey(in), in.Name, func(dir string) error {
		return copyFile(dl, filepath.Join(dir, in.StoredName()))
	})
	if err != nil {
		return "", fmt.Errorf("fetch: %s: %w", in.Name, err)
	}
	return filepath.Join(p, in.StoredName()), nil
}

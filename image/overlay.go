package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"kiln.dev/kiln/internal/beneath"
)

// Overlay writes the tree over an existing root filesystem at dir (a
// Debian root kiln assembled): directories that exist keep their owner and
// mode (a Debian root's /root is 0700), files and symlinks replace what is
// there, and every parent is resolved beneath dir, so a root's own
// symlinks (/lib -> usr/lib) are followed but an absolute one cannot lead
// a write onto the host. New entries are owned by the caller (root) and
// every time in dir newer than mtime is clamped to it afterwards.
func (t *Tree) Overlay(dir string, mtime int64) error {
	for _, n := range t.Nodes() {
		if n.Path == "" {
			continue
		}
		parent, err := beneath.Resolve(dir, path.Dir(n.Path))
		if err != nil {
			return fmt.Errorf("image: overlay %s: %w", n.Path, err)
		}
		dst := filepath.Join(parent, path.Base(n.Path))
		fi, err := os.Lstat(dst)
		exists := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image: overlay: %w", err)
		}
		switch {
		case n.Dir:
			if exists {
				if fi.IsDir() {
					continue
				}
				if fi.Mode()&fs.ModeSymlink != 0 {
					// A root's directory symlink (bin -> usr/bin): what
					// goes beneath it lands where it points.
					if _, err := beneath.Resolve(dir, n.Path); err != nil {
						return fmt.Errorf("image: overlay %s: %w", n.Path, err)
					}
					continue
				}
				return fmt.Errorf("image: overlay %s: the root has a file there, not a directory", n.Path)
			}
			if err := os.Mkdir(dst, n.Mode); err != nil {
				return fmt.Errorf("image: overlay: %w", err)
			}
			if err := os.Chmod(dst, n.Mode); err != nil {
				return fmt.Errorf("image: overlay: %w", err)
			}
		case n.Char != nil:
			return fmt.Errorf("image: %s: device nodes can only go into an initramfs", n.Path)
		default:
			if exists {
				if fi.IsDir() {
					return fmt.Errorf("image: overlay %s: the root has a directory there", n.Path)
				}
				// Removed, not written through: the old entry may be a
				// symlink pointing anywhere.
				if err := os.Remove(dst); err != nil {
					return fmt.Errorf("image: overlay: %w", err)
				}
			}
			if n.Link != "" {
				if err := os.Symlink(n.Link, dst); err != nil {
					return fmt.Errorf("image: overlay: %w", err)
				}
			} else if err := copyNode(n, dst); err != nil {
				return err
			}
		}
	}
	return ClampTimes(dir, mtime)
}

// ClampTimes sets every modification and access time under dir that is
// later than mtime to mtime (mmdebstrap's --clamp-mtime), symlinks
// themselves rather than their targets.
func ClampTimes(dir string, mtime int64) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.ModTime().Unix() > mtime {
			return lchtimes(p, mtime)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("image: clamp times: %w", err)
	}
	return nil
}

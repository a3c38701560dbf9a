package fetch

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// Archive formats UnpackArchive recognises by their first bytes.
var (
	zipMagic  = []byte("PK\x03\x04")
	gzipMagic = []byte{0x1f, 0x8b}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// UnpackArchive unpacks the .zip, .tar, .tar.gz, .tar.xz or .deb file name
// into dir, chosen by content, not by name. The rules are those of
// UnpackDeb, and stricter: a symbolic link must stay inside the tree
// (library archives have no business pointing at the host), and device
// nodes, FIFOs and the like are refused. Any refusal wraps ErrBadArchive.
func UnpackArchive(name, dir string) error {
	if IsDeb(name) {
		return unpackDebFile(name, dir)
	}
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	switch {
	case bytes.HasPrefix(head, zipMagic):
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		return UnpackZip(f, fi.Size(), dir)
	case bytes.HasPrefix(head, gzipMagic):
		z, err := gzip.NewReader(bufio.NewReader(f))
		if err != nil {
			return fmt.Errorf("%w: gzip: %v", ErrBadArchive, err)
		}
		defer z.Close()
		return unpackTarStrict(z, dir)
	case bytes.HasPrefix(head, xzMagic):
		x, err := xz.NewReader(bufio.NewReader(f))
		if err != nil {
			return fmt.Errorf("%w: xz: %v", ErrBadArchive, err)
		}
		return unpackTarStrict(x, dir)
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return unpackTarStrict(bufio.NewReader(f), dir)
	}
	return fmt.Errorf("%w: not a .zip, .tar, .tar.gz, .tar.xz or .deb", ErrBadArchive)
}

// linkInside reports whether a symlink at rel pointing at target stays
// inside the tree.
func linkInside(rel, target string) bool {
	if target == "" || path.IsAbs(target) || strings.Contains(target, "\x00") {
		return false
	}
	p := path.Join(path.Dir(rel), target)
	return p != ".." && !strings.HasPrefix(p, "../")
}

func unpackTarStrict(r io.Reader, dir string) error {
	return unpackTar(r, dir, func(h *tar.Header, rel string) error {
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeLink, tar.TypeXGlobalHeader:
		case tar.TypeSymlink:
			if !linkInside(rel, h.Linkname) {
				return fmt.Errorf("%w: symbolic link to %q leaves the tree", ErrBadArchive, h.Linkname)
			}
		default:
			return fmt.Errorf("%w: unsupported entry type %q", ErrBadArchive, string(h.Typeflag))
		}
		return nil
	})
}

// UnpackZip unpacks a zip archive into dir with UnpackArchive's rules.
func UnpackZip(r io.ReaderAt, size int64, dir string) error {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return fmt.Errorf("%w: zip: %v", ErrBadArchive, err)
	}
	t := &tree{root: dir, dirs: map[string]bool{"": true}}
	// Check every name before writing anything.
	for _, f := range zr.File {
		rel, err := cleanName(f.Name)
		if err != nil {
			return fmt.Errorf("zip: %w", err)
		}
		if strings.HasPrefix(f.Name, "/") || strings.Contains(f.Name, `\`) {
			return fmt.Errorf("zip: %w: %q is not a relative slash-separated path", ErrBadArchive, f.Name)
		}
		_ = rel
	}
	for _, f := range zr.File {
		rel, _ := cleanName(f.Name)
		if err := zipEntry(t, f, rel); err != nil {
			return fmt.Errorf("zip: %s: %w", f.Name, err)
		}
	}
	return nil
}

func zipEntry(t *tree, f *zip.File, rel string) error {
	mode := f.Mode()
	if rel == "" {
		if mode.IsDir() {
			return nil
		}
		return fmt.Errorf("%w: entry names the root", ErrBadArchive)
	}
	if mode.IsDir() || strings.HasSuffix(f.Name, "/") {
		return t.mkdirs(rel, 0o755)
	}
	if parent := path.Dir(rel); parent != "." {
		if err := t.mkdirs(parent, 0o755); err != nil {
			return err
		}
	}
	p := filepath.Join(t.root, filepath.FromSlash(rel))
	rc, err := f.Open()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadArchive, err)
	}
	defer rc.Close()
	switch {
	case mode&fs.ModeSymlink != 0:
		target, err := io.ReadAll(io.LimitReader(rc, 4096))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadArchive, err)
		}
		if !linkInside(rel, string(target)) {
			return fmt.Errorf("%w: symbolic link to %q leaves the tree", ErrBadArchive, target)
		}
		return os.Symlink(string(target), p)
	case mode.IsRegular():
		perm := mode.Perm() | 0o444
		if perm&0o111 != 0 {
			perm |= 0o111
		}
		if err := writeFile(p, perm&0o755, rc); err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("%w: unsupported entry mode %v", ErrBadArchive, mode)
}

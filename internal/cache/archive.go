package cache

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/store"
)

// maxDecoderMemory bounds what a hostile zstd frame can make the decoder
// allocate.
const maxDecoderMemory = 256 << 20

// checkRelPath accepts the slash-separated relative paths an entry can hold.
func checkRelPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || p == "." {
		return errors.New("not a clean relative path")
	}
	if p == store.ManifestName {
		return errors.New("reserved name")
	}
	return nil
}

// pack writes the entry at dir as a deterministic tar archive compressed
// with zstd: the files in manifest order, owner 0, time 0, modes as the
// manifest has them. Every file is hashed on the way and compared with the
// manifest, so a tampered local entry is never pushed.
func pack(w io.Writer, dir string, files []store.FileRecord) error {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		if err := checkRelPath(f.Path); err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		mode, _ := strconv.ParseInt(f.Mode, 8, 64)
		hdr := &tar.Header{Name: f.Path, Mode: mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch f.Type {
		case "dir":
			hdr.Typeflag, hdr.Name = tar.TypeDir, f.Path+"/"
		case "symlink":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Target, 0o777
		case "file":
			hdr.Typeflag, hdr.Size = tar.TypeReg, f.Size
		default:
			return fmt.Errorf("%s: type %q", f.Path, f.Type)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if f.Type != "file" {
			continue
		}
		if err := copyChecked(tw, filepath.Join(dir, filepath.FromSlash(f.Path)), f); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func copyChecked(w io.Writer, name string, f store.FileRecord) error {
	fh, err := os.Open(name)
	if err != nil {
		return err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(fh, f.Size))
	if err != nil {
		return err
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%s: %w: content changed since it was stored", f.Path, store.ErrTampered)
	}
	return nil
}

// unpack extracts a content stream into dir, accepting exactly the files of
// want: each path once, of the recorded type, size and sha256 (files get
// the recorded mode, symlinks the recorded target). Anything else wraps
// ErrContent. Files are created without following links and only inside
// directories this extraction made, so a hostile archive cannot write
// outside dir. With dir "" it only checks.
func unpack(r io.Reader, dir string, want []store.FileRecord) error {
	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxMemory(maxDecoderMemory), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrContent, err)
	}
	defer zr.Close()
	wanted := make(map[string]store.FileRecord, len(want))
	for _, f := range want {
		wanted[f.Path] = f
	}
	made := map[string]bool{".": true}
	tr := tar.NewReader(contentReader{zr})
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return contentErr("archive", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		f, ok := wanted[name]
		if !ok {
			return fmt.Errorf("%w: archive holds %q, which the record does not list (or lists once)", ErrContent, hdr.Name)
		}
		delete(wanted, name)
		if !made[path.Dir(name)] {
			return fmt.Errorf("%w: %q comes before its directory", ErrContent, name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		mode, _ := strconv.ParseUint(f.Mode, 8, 32)
		if dir == "" {
			dst = ""
		}
		switch {
		case f.Type == "dir" && hdr.Typeflag == tar.TypeDir && dst == "":
			made[name] = true
		case f.Type == "dir" && hdr.Typeflag == tar.TypeDir:
			if err := os.Mkdir(dst, 0o700); err != nil {
				return err
			}
			if err := os.Chmod(dst, os.FileMode(mode)|0o700); err != nil {
				return err
			}
			made[name] = true
		case f.Type == "symlink" && hdr.Typeflag == tar.TypeSymlink:
			if hdr.Linkname != f.Target {
				return fmt.Errorf("%w: %s: symlink to %q, record says %q", ErrContent, name, hdr.Linkname, f.Target)
			}
			if dst == "" {
				continue
			}
			if err := os.Symlink(f.Target, dst); err != nil {
				return err
			}
		case f.Type == "file" && hdr.Typeflag == tar.TypeReg:
			if hdr.Size != f.Size {
				return fmt.Errorf("%w: %s: %d bytes, record says %d", ErrContent, name, hdr.Size, f.Size)
			}
			if err := writeChecked(dst, tr, f, os.FileMode(mode)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %s: archive type %q, record says %s", ErrContent, name, hdr.Typeflag, f.Type)
		}
	}
	for p := range wanted {
		return fmt.Errorf("%w: %s is in the record but not in the archive", ErrContent, p)
	}
	return nil
}

func writeChecked(dst string, r io.Reader, f store.FileRecord, mode os.FileMode) error {
	if dst == "" {
		h := sha256.New()
		n, err := io.Copy(h, r)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
			return fmt.Errorf("%w: %s: sha256 %s, record says %s", ErrContent, f.Path, hex.EncodeToString(h.Sum(nil)), f.SHA256)
		}
		return nil
	}
	fd, err := unix.Open(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode|0o200))
	if err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	out := os.NewFile(uintptr(fd), dst)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%w: %s: sha256 %s, record says %s", ErrContent, f.Path, hex.EncodeToString(h.Sum(nil)), f.SHA256)
	}
	if err := os.Chmod(dst, mode|0o200); err != nil {
		return err
	}
	return nil
}

// contentReader marks every failure of the content stream that is not the
// transport's (or the caller's) as ErrContent: a corrupt frame, a bad
// checksum, an archive that ends early.
type contentReader struct{ r io.Reader }

func (c contentReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = contentErr("content", err)
	}
	return n, err
}

func contentErr(what string, err error) error {
	if errors.Is(err, ErrContent) || errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %s: %v", ErrContent, what, err)
}

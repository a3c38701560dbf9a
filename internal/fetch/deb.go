package fetch

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// ErrBadArchive is returned (wrapped) for a .deb, ar or tar archive that is
// malformed or holds something kiln refuses to unpack (a path leaving the
// tree, a file written through a symlink, a device node).
var ErrBadArchive = errors.New("bad archive")

const arMagic = "!<arch>\n"

// arHeader is one member of an ar archive.
type arHeader struct {
	Name string
	Size int64
	Mode int64
}

// arReader reads the members of a common (System V / GNU) ar archive, the
// container format of a .deb.
type arReader struct {
	r       io.Reader
	left    int64 // bytes of the current member not yet read
	pad     bool  // the current member is followed by a padding byte
	started bool
}

func newArReader(r io.Reader) *arReader { return &arReader{r: r} }

// Next skips to the next member; io.EOF after the last.
func (a *arReader) Next() (*arHeader, error) {
	if !a.started {
		var magic [8]byte
		if _, err := io.ReadFull(a.r, magic[:]); err != nil {
			return nil, fmt.Errorf("%w: ar: no magic: %v", ErrBadArchive, err)
		}
		if string(magic[:]) != arMagic {
			return nil, fmt.Errorf("%w: ar: not an ar archive", ErrBadArchive)
		}
		a.started = true
	}
	skip := a.left
	if a.pad {
		skip++
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, a.r, skip); err != nil {
			return nil, fmt.Errorf("%w: ar: truncated member: %v", ErrBadArchive, err)
		}
	}
	a.left, a.pad = 0, false
	var h [60]byte
	n, err := io.ReadFull(a.r, h[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: ar: truncated header (%d bytes)", ErrBadArchive, n)
	}
	if h[58] != '`' || h[59] != '\n' {
		return nil, fmt.Errorf("%w: ar: bad header terminator", ErrBadArchive)
	}
	field := func(b []byte) string { return strings.TrimRight(string(b), " ") }
	name := strings.TrimSuffix(field(h[0:16]), "/") // GNU ar ends names with '/'
	size, err := strconv.ParseInt(field(h[48:58]), 10, 64)
	if err != nil || size < 0 {
		return nil, fmt.Errorf("%w: ar: member %q: bad size %q", ErrBadArchive, name, field(h[48:58]))
	}
	mode, _ := strconv.ParseInt(field(h[40:48]), 8, 64)
	if name == "" {
		return nil, fmt.Errorf("%w: ar: member without a name", ErrBadArchive)
	}
	a.left, a.pad = size, size%2 == 1
	return &arHeader{Name: name, Size: size, Mode: mode}, nil
}

// Read reads the current member's data.
func (a *arReader) Read(p []byte) (int, error) {
	if a.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > a.left {
		p = p[:a.left]
	}
	n, err := a.r.Read(p)
	a.left -= int64(n)
	if err == io.EOF {
		if a.left > 0 {
			return n, fmt.Errorf("%w: ar: truncated member", ErrBadArchive)
		}
		err = nil
	}
	return n, err
}

// IsDeb reports whether the file at name is a Debian binary package.
func IsDeb(name string) bool {
	f, err := os.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	a := newArReader(bufio.NewReader(f))
	h, err := a.Next()
	return err == nil && h.Name == "debian-binary"
}

// UnpackDeb unpacks the data.tar of the .deb read from r into dir, the way
// `dpkg-deb -x` does: paths relative to dir, symlinks and hardlinks kept,
// permission bits kept but set-id bits dropped; modification times are not
// restored. It runs no maintainer scripts. dir may already hold files (a
// merged toolchain tree): an identical file is fine, a different one is an
// error. Concurrent UnpackDeb calls into the same dir are safe.
func UnpackDeb(r io.Reader, dir string) error {
	return unpackDeb(r, dir, true)
}

// unpackDeb is UnpackDeb; systemXZ lets data.tar.xz be decoded by the
// system's xz when there is one (else ulikunitz/xz decodes it).
func unpackDeb(r io.Reader, dir string, systemXZ bool) error {
	a := newArReader(r)
	h, err := a.Next()
	if err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	if h.Name != "debian-binary" {
		return fmt.Errorf("deb: %w: first member is %q, not debian-binary", ErrBadArchive, h.Name)
	}
	ver, err := io.ReadAll(io.LimitReader(a, 64))
	if err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	if !strings.HasPrefix(string(ver), "2.") {
		return fmt.Errorf("deb: %w: format %q is not 2.x", ErrBadArchive, strings.TrimSpace(string(ver)))
	}
	for {
		h, err := a.Next()
		if err == io.EOF {
			return fmt.Errorf("deb: %w: no data.tar member", ErrBadArchive)
		}
		if err != nil {
			return fmt.Errorf("deb: %w", err)
		}
		if !strings.HasPrefix(h.Name, "data.tar") {
			continue
		}
		dec, closeDec, err := decompressor(h.Name, bufio.NewReaderSize(a, 1<<20), systemXZ)
		if err != nil {
			return fmt.Errorf("deb: %w", err)
		}
		// Decompression runs beside the writing of files: xz in its own
		// process (the pipe is its read-ahead), a Go decompressor in a
		// goroutine of its own.
		var src io.Reader
		stop := func() {}
		if x, ok := dec.(*xzProcess); ok {
			src = bufio.NewReaderSize(x, 64<<10)
		} else {
			ra := newReadAhead(dec)
			src, stop = ra, ra.Close
		}
		err = UnpackTar(src, dir)
		if err == nil {
			err = drainTail(src)
		}
		stop()
		closeDec()
		if err != nil {
			return fmt.Errorf("deb: %s: %w", h.Name, err)
		}
		return nil
	}
}

// tailLimit bounds what is read after a data.tar's end: tar pads its last
// record (10 KiB), nothing more follows in a .deb dpkg-deb built.
const tailLimit = 1 << 20

// drainTail reads what follows the end of the tar, so the decompressor
// reaches the end of its stream and checks it (xz's and zstd's checksums,
// the system xz's exit status): a damaged stream fails the unpack even
// where the damage lies past the last file. A stream going on beyond
// tailLimit is left unread, as before.
func drainTail(r io.Reader) error {
	_, err := io.CopyN(io.Discard, r, tailLimit)
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: after the tar: %v", ErrBadArchive, err)
	}
	return nil
}

// decompressor picks the decompressor for a data.tar member by its
// suffix; systemXZ: see unpackDeb.
func decompressor(name string, r io.Reader, systemXZ bool) (io.Reader, func(), error) {
	nop := func() {}
	switch path.Ext(name) {
	case ".tar":
		return r, nop, nil
	case ".xz":
		if systemXZ {
			if x, ok := startXZ(r); ok {
				return x, x.Close, nil
			}
		}
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %s: %v", ErrBadArchive, name, err)
		}
		return x, nop, nil
	case ".gz":
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %s: %v", ErrBadArchive, name, err)
		}
		return z, func() { z.Close() }, nil
	case ".zst":
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nop, fmt.Errorf("%w: %s: %v", ErrBadArchive, name, err)
		}
		return z, z.Close, nil
	case ".bz2":
		return bzip2.NewReader(r), nop, nil
	}
	return nil, nop, fmt.Errorf("%w: unknown compression of %s", ErrBadArchive, name)
}

// cleanName turns a tar entry name into a path relative to the tree root,
// refusing anything that would leave it. "" is the root itself.
func cleanName(name string) (string, error) {
	n := path.Clean("/" + strings.TrimPrefix(name, "./"))
	if strings.Contains(name, "\x00") {
		return "", fmt.Errorf("%w: name %q", ErrBadArchive, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q leaves the tree", ErrBadArchive, name)
		}
	}
	return strings.TrimPrefix(n, "/"), nil
}

// tree writes into one root directory, making sure no write goes through
// a symlink (a tar may hold "a -> /etc" and then "a/passwd"). Several trees
// may write into one root at once: directories another made are accepted.
type tree struct {
	root string
	mu   sync.Mutex
	dirs map[string]bool // relative dirs known to be real directories
}

// mkdirs makes rel (a directory) and its parents, refusing symlinks on the way.
func (t *tree) mkdirs(rel string, mode fs.FileMode) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mkdirsLocked(rel, mode)
}

func (t *tree) mkdirsLocked(rel string, mode fs.FileMode) error {
	if t.dirs[rel] {
		return nil
	}
	if parent := path.Dir(rel); parent != "." {
		if err := t.mkdirsLocked(parent, 0o755); err != nil {
			return err
		}
	}
	p := filepath.Join(t.root, filepath.FromSlash(rel))
	// mkdir first (it does not follow a symlink: one in the way is
	// EEXIST), then look at what was there only if something was.
	perm := mode.Perm() | 0o700
	err := os.Mkdir(p, perm)
	switch {
	case err == nil:
		if perm&umask != 0 {
			if err := os.Chmod(p, perm); err != nil {
				return err
			}
		}
	case errors.Is(err, fs.ErrExist):
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s: is a %s, not a directory", ErrBadArchive, rel, fi.Mode().Type())
		}
	default:
		return err
	}
	t.dirs[rel] = true
	return nil
}

// UnpackTar unpacks a tar stream into dir (see UnpackDeb).
func UnpackTar(r io.Reader, dir string) error {
	return unpackTar(r, dir, nil)
}

// unpackTar is the one tar loop: every name is made relative and checked
// (cleanName), then check (if any) may refuse the entry before anything is
// written for it, then the tree writes it.
func unpackTar(r io.Reader, dir string, check func(h *tar.Header, rel string) error) error {
	t := &tree{root: dir, dirs: map[string]bool{"": true}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: tar: %v", ErrBadArchive, err)
		}
		rel, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(h, rel); err != nil {
				return fmt.Errorf("tar: %s: %w", h.Name, err)
			}
		}
		if err := t.entry(h, rel, tr); err != nil {
			return fmt.Errorf("tar: %s: %w", h.Name, err)
		}
	}
}

func (t *tree) entry(h *tar.Header, rel string, r io.Reader) error {
	perm := fs.FileMode(h.Mode).Perm() // no set-id or sticky bits
	if rel == "" {
		if h.Typeflag == tar.TypeDir {
			return nil
		}
		return fmt.Errorf("%w: entry names the root", ErrBadArchive)
	}
	if h.Typeflag == tar.TypeDir {
		return t.mkdirs(rel, perm)
	}
	if parent := path.Dir(rel); parent != "." {
		if err := t.mkdirs(parent, 0o755); err != nil {
			return err
		}
	}
	p := filepath.Join(t.root, filepath.FromSlash(rel))
	switch h.Typeflag {
	case tar.TypeReg: // archive/tar reports old-style (TypeRegA) files as TypeReg
		return writeFile(p, perm, r)
	case tar.TypeSymlink:
		if h.Linkname == "" {
			return fmt.Errorf("%w: empty symlink target", ErrBadArchive)
		}
		target := inRoot(rel, h.Linkname)
		err := os.Symlink(target, p)
		if errors.Is(err, fs.ErrExist) {
			if old, rerr := os.Readlink(p); rerr == nil && old == target {
				return nil
			}
			return fmt.Errorf("%w: conflicts with an existing file", ErrBadArchive)
		}
		return err
	case tar.TypeLink:
		target, err := cleanName(h.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("%w: hardlink to %q", ErrBadArchive, h.Linkname)
		}
		if parent := path.Dir(target); parent != "." {
			// Only a real directory of this tree may hold the target:
			// mkdirs refuses a path through a symlink.
			if err := t.mkdirs(parent, 0o755); err != nil {
				return err
			}
		}
		tp := filepath.Join(t.root, filepath.FromSlash(target))
		fi, err := os.Lstat(tp)
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: hardlink to %q, which is not a regular file unpacked before it", ErrBadArchive, h.Linkname)
		}
		err = os.Link(tp, p)
		if err == nil {
			return nil
		}
		src, oerr := os.Open(tp)
		if oerr != nil {
			return oerr
		}
		defer src.Close()
		if errors.Is(err, fs.ErrExist) {
			return sameContent(p, src)
		}
		return writeFile(p, fi.Mode().Perm(), src) // no hardlinks on this file system: copy
	case tar.TypeXGlobalHeader:
		return nil
	}
	return fmt.Errorf("%w: unsupported entry type %q", ErrBadArchive, string(h.Typeflag))
}

// writing holds the files being written by some UnpackTar of this
// process (path → a channel closed when the file is complete): two
// packages of a closure unpacked at once may ship the same file, and the
// second must compare with the whole of the first, not with what is
// written so far.
var writing sync.Map

// writeFile creates p with mode perm and the content of r. If p exists (two
// packages of a closure ship the same file), the content must be identical.
func writeFile(p string, perm fs.FileMode, r io.Reader) error {
	done := make(chan struct{})
	if other, busy := writing.LoadOrStore(p, done); busy {
		<-other.(chan struct{})
		return sameContent(p, r)
	}
	defer func() {
		writing.Delete(p)
		close(done)
	}()
	fd, err := createExcl(p, perm)
	if errors.Is(err, fs.ErrExist) {
		return sameContent(p, r)
	}
	if err != nil {
		return err
	}
	if err := copyInto(fd, r); err != nil {
		unix.Close(fd)
		return err
	}
	if perm&umask != 0 { // the process umask took bits the file needs
		if err := unix.Fchmod(fd, uint32(perm)); err != nil {
			unix.Close(fd)
			return &fs.PathError{Op: "chmod", Path: p, Err: err}
		}
	}
	if err := unix.Close(fd); err != nil {
		return &fs.PathError{Op: "close", Path: p, Err: err}
	}
	return nil
}

// createExcl creates the file p (it must not exist) for writing and
// returns its descriptor. Not an os.File: that registers every file with
// the runtime's poller and sets it non-blocking and back (an epoll_ctl
// and four fcntl per file that dpkg-deb's tar does not make, a tenth of
// the system calls of an unpack).
func createExcl(p string, perm fs.FileMode) (int, error) {
	for {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, uint32(perm))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: p, Err: err}
		}
		return fd, nil
	}
}

// umask is the process's file mode creation mask, read once: files and
// directories are created with their final mode and chmod-ed only when
// the mask took some of its bits.
var umask = func() fs.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return fs.FileMode(m)
}()

// copyBufs are the buffers copyInto writes files from.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyInto copies r into the file fd through a pooled buffer.
func copyInto(fd int, r io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if werr := writeAll(fd, buf[:n]); werr != nil {
				return fmt.Errorf("write: %w", werr)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// writeAll writes b to fd, however many writes it takes.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		b = b[n:]
	}
	return nil
}

func sameContent(p string, r io.Reader) error {
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: conflicts with an existing non-file", ErrBadArchive)
	}
	old, err := os.Open(p)
	if err != nil {
		return err
	}
	defer old.Close()
	h1, h2 := sha256.New(), sha256.New()
	if _, err := io.Copy(h1, old); err != nil {
		return err
	}
	if _, err := io.Copy(h2, r); err != nil {
		return err
	}
	if !bytes.Equal(h1.Sum(nil), h2.Sum(nil)) {
		return fmt.Errorf("%w: conflicts with an existing file of different content (sha256 %s)", ErrBadArchive, hex.EncodeToString(h1.Sum(nil)))
	}
	return nil
}

// inRoot rewrites the target of the symlink at rel (slash-separated,
// relative to the unpacked tree) so that it resolves inside the tree: an
// absolute target is taken as relative to the tree's root (as if the tree
// were /, which is what a package means by it), and ".." never climbs
// above the root. A target that already stays inside is kept as it is.
// (Every later use resolves beneath the root as well: beneath.Open.)
func inRoot(rel, target string) string {
	if !path.IsAbs(target) {
		depth := strings.Count(path.Dir(rel), "/")
		if path.Dir(rel) != "." {
			depth++
		}
		escapes := false
		for _, seg := range strings.Split(target, "/") {
			switch seg {
			case "..":
				depth--
			case "", ".":
			default:
				depth++
			}
			if depth < 0 {
				escapes = true
				break
			}
		}
		if !escapes {
			return target
		}
	}
	dir := path.Dir("/" + rel)
	abs := path.Join(dir, target) // Join cleans: ".." stops at "/"
	if path.IsAbs(target) {
		abs = path.Clean(target)
	}
	r, err := filepath.Rel(dir, abs)
	if err != nil {
		return "."
	}
	return filepath.ToSlash(r)
}

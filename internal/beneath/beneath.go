// Package beneath opens paths inside a root directory without letting a
// symlink (or "..") take the lookup outside it: openat2(2) with
// RESOLVE_BENEATH, as a container runtime resolves paths in a rootfs.
// A recipe's files, an input's subdir and $in paths, and every sandbox
// mount go through it, so a planted link such as src/k ->
// ~/.config/kiln/kiln.key or hostroot -> / is refused, not followed.
package beneath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrEscapes is returned (wrapped, naming the path) when a path resolves
// outside its root: an absolute symlink, or a symlink or ".." that climbs
// out.
var ErrEscapes = errors.New("resolves outside")

// how resolves beneath the root and never through /proc magic links.
func how(flags int) *unix.OpenHow {
	return &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
}

// Open opens rel (slash- or OS-separated, relative) beneath root with the
// given open(2) flags (O_RDONLY when 0). Symlinks are followed only while
// they stay inside root.
func Open(root, rel string, flags int) (*os.File, error) {
	if filepath.IsAbs(rel) {
		return nil, fmt.Errorf("%s: %w %s: an absolute path", rel, ErrEscapes, root)
	}
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(dir)
	name := filepath.FromSlash(rel)
	if name == "" {
		name = "."
	}
	for {
		fd, err := unix.Openat2(dir, name, how(flags))
		switch {
		case err == unix.EINTR || err == unix.EAGAIN:
			continue // a rename raced the lookup: try again
		case err == unix.EXDEV:
			return nil, fmt.Errorf("%s: %w %s", rel, ErrEscapes, root)
		case err == unix.ENOSYS:
			return openChecked(root, rel, flags)
		case err != nil:
			return nil, &os.PathError{Op: "open", Path: filepath.Join(root, name), Err: err}
		}
		return os.NewFile(uintptr(fd), filepath.Join(root, name)), nil
	}
}

// openChecked is Open for kernels before openat2 (5.6): resolve every
// link, check the result is inside root, open it without following a last
// link. It is open to a rename race the kernel check is not.
func openChecked(root, rel string, flags int) (*os.File, error) {
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, err
	}
	p, err := filepath.EvalSymlinks(filepath.Join(realRoot, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	if p != realRoot && !strings.HasPrefix(p, realRoot+string(filepath.Separator)) {
		return nil, fmt.Errorf("%s: %w %s", rel, ErrEscapes, root)
	}
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// Resolve returns the path, with every symlink resolved, that rel names
// beneath root; an error wrapping ErrEscapes if it leaves root.
func Resolve(root, rel string) (string, error) {
	f, err := Open(root, rel, unix.O_PATH)
	if err != nil {
		return "", err
	}
	defer f.Close()
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		// No /proc: the path as given, checked beneath root just now.
		return filepath.Join(root, filepath.FromSlash(rel)), nil
	}
	return p, nil
}

// Check reports whether rel stays beneath root, naming it if it does not.
func Check(root, rel string) error {
	_, err := Resolve(root, rel)
	return err
}

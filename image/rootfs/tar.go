package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/image"
)

// ErrArchive is returned (wrapped, naming the entry) when a root archive
// holds what WriteTar never writes: a name outside the root, an entry
// beneath a symlink or a non-directory, a name given twice, a hard link to
// anything but an earlier regular file, an unknown entry type.
var ErrArchive = errors.New("bad root archive")

// xattrPrefix is how a PAX archive spells an extended attribute (GNU tar,
// bsdtar and Go's archive/tar agree).
const xattrPrefix = "SCHILY.xattr."

// WriteTar writes the tree at dir to w as a PAX tar that keeps what a root
// filesystem needs: owners, modes with set-id and sticky bits, modification
// times to the nanosecond, hard links, symlinks, device nodes, FIFOs and
// extended attributes (file capabilities; labels of the build host's
// security module are left out, as Squashfs drops them). Entries come in
// path order, each directory before its contents, and nothing of the host
// (user names, access times) is recorded: the same tree gives the same
// bytes. A socket is refused.
func WriteTar(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		h := &tar.Header{Name: rel, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
			ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec), Format: tar.FormatPAX}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			// The root itself is "./": its owner, mode and time are
			// the tree's too (a package's "./" entry sets them).
			h.Typeflag, h.Name = tar.TypeDir, strings.TrimPrefix(rel+"/", "./")
			if rel == "." {
				h.Name = "./"
			}
		case unix.S_IFREG:
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
			if st.Nlink > 1 {
				k := inode{uint64(st.Dev), st.Ino}
				if first, ok := links[k]; ok {
					h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				} else {
					links[k] = rel
				}
			}
		case unix.S_IFLNK:
			h.Typeflag = tar.TypeSymlink
			if h.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			h.Typeflag = tar.TypeChar
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				h.Typeflag = tar.TypeBlock
			}
			h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			h.Typeflag = tar.TypeFifo
		default:
			return fmt.Errorf("%s: a %s cannot be archived", rel, fi.Mode().Type())
		}
		xa, err := xattrs(p)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if len(xa) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range xa {
				h.PAXRecords[xattrPrefix+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size == 0 {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if n, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		} else if n != h.Size {
			return fmt.Errorf("%s: changed while archived", rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rootfs: archive: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("rootfs: archive: %w", err)
	}
	return nil
}

// xattrs lists a path's extended attributes, without the host's labels.
func xattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" || slices.Contains(image.HostLabels, name) {
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, n)
		if n, err = unix.Lgetxattr(p, name, val); err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		out[name] = string(val[:n])
	}
	return out, nil
}

// ExtractTar unpacks an archive WriteTar wrote into dir, an empty
// directory, as root: owners, modes, set-id bits, times, hard links,
// device nodes and extended attributes as archived, dir's own from the
// archive's first entry "./". The archive is
// treated as hostile: every entry must lie beneath dir, its parent must be
// a directory the archive made before it (so no entry is written through
// a symlink), no name may come twice, and a hard link must name an earlier
// regular file; anything else is ErrArchive, and dir is left partly
// filled for the caller to remove.
func ExtractTar(ctx context.Context, r io.Reader, dir string) error {
	if err := extractTar(ctx, r, dir); err != nil {
		return fmt.Errorf("rootfs: unpack: %w", err)
	}
	return nil
}

func extractTar(ctx context.Context, r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	dirs := map[string]bool{".": true}
	files := map[string]bool{}
	seen := map[string]bool{}
	type dirMeta struct {
		p string
		h *tar.Header
	}
	var made []dirMeta
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h.Name == "./" && len(seen) == 0 && h.Typeflag == tar.TypeDir {
			// The root directory itself, first: dir exists already.
			seen["."] = true
			made = append(made, dirMeta{dir, h})
			continue
		}
		name := strings.TrimSuffix(h.Name, "/")
		if name == "" || name == "." || !fs.ValidPath(name) {
			return fmt.Errorf("%w: entry %q is not a clean relative path", ErrArchive, h.Name)
		}
		if seen[name] {
			return fmt.Errorf("%w: %s is given twice", ErrArchive, name)
		}
		if !dirs[path.Dir(name)] {
			return fmt.Errorf("%w: %s: its parent is not a directory made earlier by the archive", ErrArchive, name)
		}
		seen[name] = true
		p := filepath.Join(dir, filepath.FromSlash(name))
		mode := uint32(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			// Made writable now, given its mode and times once its
			// contents are in (a 0555 directory, a time the next
			// entry would change).
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
			dirs[name] = true
			made = append(made, dirMeta{p, h})
			continue
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			files[name] = true
		case tar.TypeLink:
			if !files[h.Linkname] {
				return fmt.Errorf("%w: %s: hard link to %q, not an earlier regular file", ErrArchive, name, h.Linkname)
			}
			if err := os.Link(filepath.Join(dir, filepath.FromSlash(h.Linkname)), p); err != nil {
				return err
			}
			// The link shares the first name's inode: owner, mode, times
			// and attributes are already that file's.
			continue
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			if err := unix.Mknod(p, kind|0o600, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
				return fmt.Errorf("%s: mknod: %w", name, err)
			}
		default:
			return fmt.Errorf("%w: %s: entry type %q", ErrArchive, name, h.Typeflag)
		}
		if err := setMeta(p, h, mode, h.Typeflag == tar.TypeSymlink); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	for i := len(made) - 1; i >= 0; i-- {
		if err := setMeta(made[i].p, made[i].h, uint32(made[i].h.Mode&0o7777), false); err != nil {
			return fmt.Errorf("%s: %w", made[i].h.Name, err)
		}
	}
	return nil
}

// setMeta gives p its archived owner, mode, attributes and times, in the
// order that keeps them: chown clears set-id bits and file capabilities,
// so it comes first, and the times come last.
func setMeta(p string, h *tar.Header, mode uint32, symlink bool) error {
	if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
		return err
	}
	if !symlink {
		if err := unix.Chmod(p, mode); err != nil {
			return err
		}
	}
	var names []string
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, xattrPrefix) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		if err := unix.Lsetxattr(p, strings.TrimPrefix(k, xattrPrefix), []byte(h.PAXRecords[k]), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", strings.TrimPrefix(k, xattrPrefix), err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

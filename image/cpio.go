package image

import (
	"compress/gzip"
	"fmt"
	"io"
)

// WriteInitramfs writes tree as a newc cpio archive compressed with gzip, the
// format the Linux kernel unpacks into its initial root. Inode numbers count
// up in path order, every mtime is epoch, owners are root, and the gzip
// header has no name and no time, so the output depends only on the tree.
func WriteInitramfs(w io.Writer, tree *Tree, epoch int64) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	zw.OS = 3 // Unix, as gzip(1) writes
	if err := WriteCPIO(zw, tree, epoch); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// WriteCPIO writes tree as an uncompressed newc ("070701") cpio archive.
func WriteCPIO(w io.Writer, tree *Tree, epoch int64) error {
	var off int64
	put := func(b []byte) error {
		n, err := w.Write(b)
		off += int64(n)
		if err != nil {
			return fmt.Errorf("initramfs: write: %w", err)
		}
		return nil
	}
	pad := func() error {
		if r := off % 4; r != 0 {
			return put(make([]byte, 4-r))
		}
		return nil
	}
	header := func(ino uint32, mode uint32, nlink uint32, size int64, rmaj, rmin uint32, name string) error {
		h := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, mode, 0, 0, nlink, uint32(epoch), uint32(size), 0, 0, rmaj, rmin, len(name)+1, 0)
		if err := put([]byte(h)); err != nil {
			return err
		}
		if err := put(append([]byte(name), 0)); err != nil {
			return err
		}
		return pad()
	}
	ino := uint32(0)
	for _, n := range tree.Nodes() {
		ino++
		name := n.Path
		if name == "" {
			name = "."
		}
		perm := uint32(n.Mode.Perm())
		switch {
		case n.Dir:
			if err := header(ino, 0o040000|perm, 2, 0, 0, 0, name); err != nil {
				return err
			}
		case n.Char != nil:
			if err := header(ino, 0o020000|perm, 1, 0, n.Char.Major, n.Char.Minor, name); err != nil {
				return err
			}
		case n.Link != "":
			if err := header(ino, 0o120000|0o777, 1, int64(len(n.Link)), 0, 0, name); err != nil {
				return err
			}
			if err := put([]byte(n.Link)); err != nil {
				return err
			}
			if err := pad(); err != nil {
				return err
			}
		default:
			if n.Size > 0xffffffff {
				return fmt.Errorf("initramfs: %s: too large for newc cpio", n.Path)
			}
			if err := header(ino, 0o100000|perm, 1, n.Size, 0, 0, name); err != nil {
				return err
			}
			r, err := n.Open()
			if err != nil {
				return fmt.Errorf("initramfs: %w", err)
			}
			c, err := io.Copy(w, io.LimitReader(r, n.Size+1))
			r.Close()
			off += c
			if err != nil {
				return fmt.Errorf("initramfs: %s: %w", n.Path, err)
			}
			if c != n.Size {
				return fmt.Errorf("initramfs: %s: changed size while being copied", n.Path)
			}
			if err := pad(); err != nil {
				return err
			}
		}
	}
	return header(0, 0, 1, 0, 0, 0, "TRAILER!!!")
}

package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// SquashfsOptions say how MakeSquashfsDir turns a directory into squashfs.
type SquashfsOptions struct {
	// Epoch is every inode's time and the superblock's mkfs time.
	Epoch int64
	// RootOwned stores every entry as owned by root (uid and gid 0); else
	// the owners on disk are kept.
	RootOwned bool
	// Xattrs keeps the entries' extended attributes (but the build host's
	// security labels, which MakeSquashfsDir removes first); else none
	// are stored.
	Xattrs bool
	// Compression is one of SquashfsCompressions; "" is DefaultSquashfsCompression.
	Compression string
}

// DefaultSquashfsCompression is the compression of a squashfs partition
// whose recipe names none: zstd, which every kernel since 4.14 built with
// CONFIG_SQUASHFS_ZSTD reads (Debian's arm64 kernel has it, with its
// decompressor built in).
const DefaultSquashfsCompression = "zstd"

// squashfsCompressions are the compressions a squashfs partition may name,
// each with the level kiln passes ("": the compressor's own). Measured with
// mksquashfs 4.5.1 on 24 MiB of text and random runs (2-core Xeon, CPU
// seconds, output bytes): zstd level 3 0.05 s 6.7 MB, mksquashfs's zstd
// default 15 3.6 s 5.7 MB; gzip level 6 1.0 s 6.0 MB, mksquashfs's gzip
// default 9 2.4 s 5.9 MB; zlib's 6 is also what go-diskfs wrote before
// mksquashfs. xz has no levels in mksquashfs.
var squashfsCompressions = []squashfsCompression{{"zstd", "3"}, {"gzip", "6"}, {"xz", ""}}

type squashfsCompression struct{ name, level string }

// SquashfsCompressions are the names a squashfs partition's compression may
// take.
var SquashfsCompressions = func() (names []string) {
	for _, c := range squashfsCompressions {
		names = append(names, c.name)
	}
	return names
}()

// MakeSquashfsDir writes the directory dir as a squashfs image at out with
// mksquashfs (squashfs-tools, a pinned host tool): modes, set-id bits,
// device nodes and hard links kept, owners kept unless opts.RootOwned,
// every time opts.Epoch, entries in mksquashfs's sorted order. mksquashfs
// compresses on every core and its output does not depend on how many:
// the same directory gives the same bytes. It is kiln's one way to make
// squashfs, for a Tree (MakeSquashfs) and for an assembled Debian root.
func MakeSquashfsDir(ctx context.Context, dir, out string, opts SquashfsOptions) error {
	comp := opts.Compression
	if comp == "" {
		comp = DefaultSquashfsCompression
	}
	i := slices.IndexFunc(squashfsCompressions, func(c squashfsCompression) bool { return c.name == comp })
	if i < 0 {
		return fmt.Errorf("squashfs: unknown compression %q (want one of %v): %w", comp, SquashfsCompressions, ErrLayout)
	}
	e := strconv.FormatInt(opts.Epoch, 10)
	args := []string{dir, out, "-noappend", "-no-progress", "-quiet", "-reproducible",
		"-comp", comp, "-all-time", e, "-mkfs-time", e}
	if level := squashfsCompressions[i].level; level != "" {
		args = append(args, "-Xcompression-level", level)
	}
	if opts.RootOwned {
		args = append(args, "-all-root")
	}
	if opts.Xattrs {
		if err := dropHostLabels(dir); err != nil {
			return err
		}
		args = append(args, "-xattrs")
	} else {
		args = append(args, "-no-xattrs")
	}
	cmd := exec.CommandContext(ctx, "mksquashfs", args...)
	// Not SOURCE_DATE_EPOCH as well: mksquashfs refuses it beside
	// -all-time and -mkfs-time.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC", "LC_ALL=C"}
	var stderr bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		os.Remove(out)
		return fmt.Errorf("squashfs: mksquashfs: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// MakeSquashfs builds a squashfs image of tree in a new file under tmpDir and
// returns its path: the tree is written out (Materialize: modes as the tree
// says, times epoch) and made into squashfs by MakeSquashfsDir, every entry
// owned by root, no extended attributes (the host's are not the tree's),
// compressed as compression says ("": DefaultSquashfsCompression).
func MakeSquashfs(ctx context.Context, tree *Tree, epoch int64, compression, tmpDir string) (string, error) {
	work, err := os.MkdirTemp(tmpDir, "squashfs-")
	if err != nil {
		return "", fmt.Errorf("squashfs: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", fmt.Errorf("squashfs: %w", err)
	}
	if err := tree.Materialize(root, epoch); err != nil {
		return "", err
	}
	out, err := os.CreateTemp(tmpDir, "squashfs-*.img")
	if err != nil {
		return "", fmt.Errorf("squashfs: %w", err)
	}
	out.Close()
	if err := MakeSquashfsDir(ctx, root, out.Name(), SquashfsOptions{Epoch: epoch, RootOwned: true, Compression: compression}); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// HostLabels are extended attributes a build host sets on its own: kiln
// keeps none of them in a filesystem or archive it makes.
var HostLabels = []string{"security.selinux", "security.apparmor", "security.SMACK64"}

// dropHostLabels removes the labels the build host's security module put
// on the files under dir: they describe the host, not the tree.
func dropHostLabels(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		for _, a := range HostLabels {
			if err := unix.Lremovexattr(p, a); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
				return fmt.Errorf("%s: remove %s: %w", p, a, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("squashfs: %w", err)
	}
	return nil
}

// copyFileInto copies the file at src into w at off; it fails with ErrNoSpace
// when the file is larger than limit.
func copyFileInto(w io.WriterAt, off, limit int64, src, what string) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() > limit {
		return 0, fmt.Errorf("%s is %d bytes, its partition holds %d: %w", what, fi.Size(), limit, ErrNoSpace)
	}
	n := &Node{Path: filepath.Base(src), Source: src, Size: fi.Size()}
	return fi.Size(), writeNodeAt(w, n, off, 0)
}

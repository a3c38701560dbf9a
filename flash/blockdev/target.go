package blockdev

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image/disk"
)

// Target is a block device of this machine opened for a whole-disk write, as
// a flash.DiskTarget: Open has refused what must not be written (not a
// block device, a partition, mounted or held, the running system's disk,
// not removable without Force) and holds the device open with O_EXCL.
type Target struct {
	path string // the resolved /dev node
	size int64  // bytes
	out  *os.File
}

var _ flash.DiskTarget = (*Target)(nil)

// Open resolves dev (/dev/sdX, /dev/disk/by-id/…), checks it and opens it
// for writing.
func Open(dev string, opts Options) (*Target, error) {
	path, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	d := &Target{path: path}
	if d.size, err = check(path, opts); err != nil {
		return d, err
	}
	// O_EXCL on a block device: the kernel refuses it while anything has
	// it (or a partition of it) mounted, a second guard against a race
	// with an automounter.
	if d.out, err = os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|os.O_EXCL, 0); err != nil {
		return d, fmt.Errorf("blockdev: open %s: %w", path, err)
	}
	return d, nil
}

// Path is the resolved /dev node.
func (d *Target) Path() string { return d.path }

// WriteDisk writes bm's ranges of src with O_DIRECT, then syncs and drops
// the device's buffer cache so HashDisk reads the medium.
func (d *Target) WriteDisk(ctx context.Context, src io.Reader, bm *disk.Bmap, p flash.Progress) (string, error) {
	if d.size < bm.ImageSize {
		return "", fmt.Errorf("blockdev: %s: %w: %d bytes, the image %d", d.path, ErrTooSmall, d.size, bm.ImageSize)
	}
	for _, rg := range bm.Ranges {
		if off, n := rg.Offset(bm.BlockSize, bm.ImageSize); off%512 != 0 || n%512 != 0 {
			return "", fmt.Errorf("blockdev: %w: range at %d+%d is not whole 512-byte sectors", ErrBadBmap, off, n)
		}
	}
	sum, err := writeRanges(ctx, src, d.out, bm, p)
	if err == nil {
		err = d.out.Sync()
	}
	if err == nil {
		err = flushBuffers(d.out)
	}
	if err != nil {
		return "", fmt.Errorf("blockdev: write %s: %w", d.path, err)
	}
	return sum, nil
}

// HashDisk reads bm's ranges back with O_DIRECT and hashes them.
func (d *Target) HashDisk(ctx context.Context, bm *disk.Bmap, p flash.Progress) (string, error) {
	if faultBeforeVerify != nil {
		if err := faultBeforeVerify(d.path); err != nil {
			return "", err
		}
	}
	sum, err := readBack(ctx, d.path, bm, p)
	if err != nil {
		return "", fmt.Errorf("blockdev: read back %s: %w", d.path, err)
	}
	return sum, nil
}

// Close closes the device and asks the kernel to re-read its partition
// table.
func (d *Target) Close() error {
	if d.out == nil {
		return nil
	}
	err := d.out.Close()
	d.out = nil
	rereadPartitions(d.path)
	return err
}

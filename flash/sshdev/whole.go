package sshdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// Disk is a block device on a device reached over SSH (a card reader on a
// provisioning host, /dev/sdX) as a flash.DiskTarget: the device's stock
// dd writes the mapped ranges in one session, and its dd | sha256sum
// hashes them, read with O_DIRECT past its page cache.
type Disk struct {
	d    *device
	path string
	c    io.Closer // the connection, when the Disk owns it
}

var _ flash.DiskTarget = (*Disk)(nil)

// NewDisk returns the block device at path on the device r runs commands
// on. Close does not close r.
func NewDisk(r ssh.Runner, path string) *Disk { return &Disk{d: &device{r: r}, path: path} }

// OpenDisk dials the device and returns its block device at path; Close
// ends the connection.
func OpenDisk(ctx context.Context, dial ssh.Dialer, path string) (*Disk, error) {
	if !strings.HasPrefix(path, "/dev/") {
		return nil, fmt.Errorf("%q is not a block device: %w", path, ErrNotDevice)
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	d := NewDisk(c, path)
	d.c = c
	return d, nil
}

// ErrNotDevice means a whole-disk port names no block device
// (ssh://host/dev/sdX is one; ssh://host alone is for A/B updates).
var ErrNotDevice = errors.New("not a block device")

// Close ends the connection if OpenDisk made it.
func (k *Disk) Close() error {
	if k.c != nil {
		return k.c.Close()
	}
	return nil
}

// ranges returns bm's ranges as byte offsets and lengths, refusing any
// that is not whole sectors (dd's O_DIRECT reads need them).
func ranges(bm *disk.Bmap) ([][2]int64, error) {
	var rs [][2]int64
	for _, rg := range bm.Ranges {
		off, n := rg.Offset(bm.BlockSize, bm.ImageSize)
		if off%512 != 0 || n%512 != 0 {
			return nil, fmt.Errorf("%w: range at %d+%d is not whole 512-byte sectors (a disk image's size is a multiple of 512)", disk.ErrBmap, off, n)
		}
		rs = append(rs, [2]int64{off, n})
	}
	return rs, nil
}

// WriteDisk streams the mapped ranges of src into one dd per range, run
// by one shell on the device, then syncs.
func (k *Disk) WriteDisk(ctx context.Context, src io.Reader, bm *disk.Bmap, p flash.Progress) (string, error) {
	rs, err := ranges(bm)
	if err != nil {
		return "", err
	}
	var write strings.Builder
	write.WriteString("set -e\n")
	for _, r := range rs {
		fmt.Fprintf(&write, "dd of=%s bs=1048576 iflag=fullblock,count_bytes count=%d oflag=seek_bytes seek=%d conv=notrunc status=none\n", quote(k.path), r[1], r[0])
	}
	write.WriteString("sync\n")
	pr, pw := io.Pipe()
	type streamed struct {
		sum string
		err error
	}
	sum := make(chan streamed, 1)
	total := bm.Mapped()
	go func() {
		var sent int64
		s, err := bm.Stream(src, func(_ int64, b []byte) error {
			if _, err := pw.Write(b); err != nil {
				return err
			}
			sent += int64(len(b))
			p.Report("write", sent, total)
			return nil
		})
		if err != nil {
			pw.CloseWithError(err)
		} else {
			pw.Close()
		}
		sum <- streamed{s, err}
	}()
	werr := k.d.run(ctx, "sh -c "+quote(write.String()), pr, nil)
	pr.CloseWithError(io.ErrClosedPipe)
	st := <-sum
	switch {
	case st.err != nil: // the image or its bmap is bad: what reached the device is not it
		return "", fmt.Errorf("write %s: %w", k.path, st.err)
	case werr != nil:
		return "", fmt.Errorf("write %s: %w", k.path, werr)
	}
	return st.sum, nil
}

// HashDisk hashes bm's ranges on the device, in order, in one session.
func (k *Disk) HashDisk(ctx context.Context, bm *disk.Bmap, p flash.Progress) (string, error) {
	rs, err := ranges(bm)
	if err != nil {
		return "", err
	}
	var hash strings.Builder
	hash.WriteString("{ ")
	for _, r := range rs {
		fmt.Fprintf(&hash, "dd if=%s bs=1048576 iflag=direct,skip_bytes,count_bytes skip=%d count=%d status=none; ", quote(k.path), r[0], r[1])
	}
	hash.WriteString("} | sha256sum")
	p.Report("verify", 0, bm.Mapped())
	out, err := k.d.output(ctx, hash.String())
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", k.path, err)
	}
	f := strings.Fields(out)
	if len(f) == 0 || len(f[0]) != 64 {
		return "", fmt.Errorf("hash %s: unexpected sha256sum output %q", k.path, out)
	}
	p.Report("verify", bm.Mapped(), bm.Mapped())
	return f[0], nil
}

// WriteResult is the proof of a whole-device write (WriteImage).
type WriteResult struct {
	flash.DiskResult
	Path           string `json:"path"`
	ArtifactSHA256 string `json:"artifact_sha256"` // of the whole file as read (.img or .img.xz)
}

// WriteDevice opens the image at imgPath and writes it with WriteImage.
func WriteDevice(ctx context.Context, r ssh.Runner, devPath, imgPath string, bm *disk.Bmap, p flash.Progress) (*WriteResult, error) {
	f, err := os.Open(imgPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return WriteImage(ctx, r, devPath, imgPath, f, bm, p)
}

// WriteImage streams a disk image (.img, or .img.xz when name ends in .xz)
// read once from src to the block device at devPath on the device and
// proves it (flash.WriteDisk over a Disk): every byte of the image is read
// and checked against the bmap on the way, so a short or stale bmap stops
// the write instead of being reported verified; the device's hash of the
// written ranges must equal the image's. The result carries the SHA-256 of
// the whole artifact as read: the caller compares it with the one its
// trust check saw.
func WriteImage(ctx context.Context, r ssh.Runner, devPath, name string, src io.Reader, bm *disk.Bmap, p flash.Progress) (*WriteResult, error) {
	in, size, art, done := image.OpenDiskStream(name, src)
	defer done()
	bm, err := disk.BmapFor(name, size, bm)
	if err != nil {
		return nil, err
	}
	dr, err := flash.WriteDisk(ctx, NewDisk(r, devPath), in, size, bm, p)
	res := &WriteResult{DiskResult: *dr, Path: devPath}
	if dr.ImageSHA256 != "" {
		res.ArtifactSHA256 = art()
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", devPath, err)
	}
	return res, nil
}

package blockdev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// Refusals, each returned (wrapped) before anything is written.
var (
	ErrNotBlockDevice = errors.New("not a block device")
	ErrMounted        = errors.New("device is mounted")
	ErrSystemDisk     = errors.New("device holds the running system")
	ErrTooSmall       = errors.New("device is smaller than the image")
	ErrNotRemovable   = errors.New("device is not removable")
	// ErrBadBmap is disk.ErrBmap: the bmap does not describe the image
	// (its size; a range whose checksum differs or data outside the ranges,
	// found while writing, before that range's last bytes go out).
	ErrBadBmap = disk.ErrBmap
)

// Options tune Write and Open.
type Options struct {
	Bmap     *disk.Bmap // nil: every byte of the image is written
	Force    bool       // write to a non-removable disk
	Progress flash.Progress
	// proc is where mountinfo and swaps are read ("" is /proc/self and
	// /proc); tests point it at a fake one.
	proc string
}

// Report is what Write did.
type Report struct {
	Device         string  `json:"device"`          // as given
	Path           string  `json:"path"`            // resolved /dev node
	ImageSize      int64   `json:"image_size"`      // bytes
	DeviceSize     int64   `json:"device_size"`     // bytes
	BytesWritten   int64   `json:"bytes_written"`   // mapped bytes
	Ranges         int     `json:"ranges"`          // bmap ranges written
	ArtifactSHA256 string  `json:"artifact_sha256"` // the whole image, holes included
	WrittenSHA256  string  `json:"written_sha256"`  // the mapped ranges of the image
	ReadbackSHA256 string  `json:"readback_sha256"` // the same ranges read back from the device
	Verified       bool    `json:"verified"`
	WriteSec       float64 `json:"write_sec"`
	VerifySec      float64 `json:"verify_sec"`
}

const chunk = 4 << 20 // write and read unit; a multiple of every sector size

// buffers is how many chunks a write or a read-back holds at once: one
// being filled (or hashed), the others with the device.
const buffers = 3

// alignedBuf returns n bytes starting on a 4 KiB boundary, as O_DIRECT needs.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off : off+n]
}

// Write writes the image at imgPath (.img or .img.xz) to the block device
// dev (/dev/sdX, /dev/disk/by-id/…) and proves it by reading it back: the
// device is opened as a Target (every refusal of Open) and written and
// proven by flash.WriteDisk, the path every disk back end shares.
func Write(ctx context.Context, dev, imgPath string, opts Options) (*Report, error) {
	rep := &Report{Device: dev}
	f, err := os.Open(imgPath)
	if err != nil {
		return rep, fmt.Errorf("blockdev: %w", err)
	}
	defer f.Close()
	plain, size, artifact, done := image.OpenDiskStream(imgPath, f)
	defer done()
	bm, err := disk.BmapFor(imgPath, size, opts.Bmap)
	if err != nil {
		return rep, fmt.Errorf("blockdev: %w", err)
	}
	rep.ImageSize, rep.Ranges, rep.BytesWritten = bm.ImageSize, len(bm.Ranges), bm.Mapped()
	d, err := Open(dev, opts)
	if d != nil {
		rep.Path, rep.DeviceSize = d.path, d.size
	}
	if err != nil {
		return rep, err
	}
	defer d.Close()
	// The plain image, holes included (Stream reads all of it): for an
	// uncompressed image that is the artifact OpenDiskStream hashes.
	src, full := plain, artifact
	if image.XZName(imgPath) {
		h := sha256.New()
		src, full = io.TeeReader(plain, h), func() string { return hex.EncodeToString(h.Sum(nil)) }
	}
	res, err := flash.WriteDisk(ctx, d, src, size, bm, opts.Progress)
	rep.WrittenSHA256, rep.ReadbackSHA256, rep.Verified = res.ImageSHA256, res.DeviceSHA256, res.Verified
	rep.WriteSec, rep.VerifySec = res.WriteSec, res.VerifySec
	if res.ImageSHA256 != "" {
		rep.ArtifactSHA256 = full()
	}
	if errors.Is(err, flash.ErrVerify) {
		return rep, fmt.Errorf("blockdev: %s: %w", d.path, err)
	}
	return rep, err
}

// bufferPool is a pool of the aligned chunks a write or a read-back
// passes between its two goroutines.
func bufferPool() chan []byte {
	free := make(chan []byte, buffers)
	for range buffers {
		free <- alignedBuf(chunk)
	}
	return free
}

// writeRanges streams src (the whole image) through the bmap and writes
// the mapped ranges to out at their offsets, gathered into aligned chunks
// for O_DIRECT. Reading and checking the image (Stream) and writing the
// device overlap: a goroutine writes one chunk while the next is filled,
// in order, from a pool of buffers. It returns the SHA-256 of the mapped
// bytes.
func writeRanges(ctx context.Context, src io.Reader, out *os.File, bm *disk.Bmap, progress flash.Progress) (string, error) {
	type piece struct {
		buf []byte
		at  int64
	}
	free := bufferPool()
	full := make(chan piece, buffers)
	stopped := make(chan struct{}) // closed when the writer stops early
	var werr error                 // the writer's error, read after stopped or done
	done := make(chan struct{})
	go func() {
		defer close(done)
		var written int64
		total := bm.Mapped()
		for p := range full {
			if werr == nil {
				if _, err := out.WriteAt(p.buf, p.at); err != nil {
					werr = err
					close(stopped)
				} else {
					written += int64(len(p.buf))
					progress.Report("write", written, total)
				}
			}
			free <- p.buf[:cap(p.buf)]
		}
	}()
	buf := <-free
	var fill, at int64 // bytes in buf, their device offset
	flush := func() error {
		if fill == 0 {
			return nil
		}
		select {
		case full <- piece{buf[:fill], at}:
		case <-stopped:
			return werr
		}
		select {
		case buf = <-free:
		case <-stopped:
			return werr
		}
		fill = 0
		return ctx.Err()
	}
	sum, err := bm.Stream(src, func(off int64, p []byte) error {
		if fill > 0 && (at+fill != off || fill+int64(len(p)) > chunk) {
			if err := flush(); err != nil {
				return err
			}
		}
		if fill == 0 {
			at = off
		}
		copy(buf[fill:], p)
		fill += int64(len(p))
		return nil
	})
	if err == nil {
		err = flush()
	}
	close(full)
	<-done
	if err == nil {
		err = werr
	}
	if err != nil {
		return "", err
	}
	return sum, nil
}

// readBack hashes the mapped ranges of the device, read with O_DIRECT: a
// goroutine reads the next chunk while the last one is hashed.
func readBack(ctx context.Context, path string, bm *disk.Bmap, progress flash.Progress) (string, error) {
	in, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := flushBuffers(in); err != nil {
		return "", err
	}
	type piece struct {
		buf []byte
		err error
	}
	free := bufferPool()
	read := make(chan piece, buffers)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		defer close(read)
		for _, rg := range bm.Ranges {
			off, n := rg.Offset(bm.BlockSize, bm.ImageSize)
			for left := n; left > 0; {
				var b []byte
				select {
				case b = <-free:
				case <-quit:
					return
				}
				k := min(int64(chunk), left)
				_, err := in.ReadAt(b[:k], off+n-left)
				select {
				case read <- piece{b[:k], err}:
				case <-quit:
					return
				}
				if err != nil {
					return
				}
				left -= k
			}
		}
	}()
	h := sha256.New()
	var done int64
	total := bm.Mapped()
	for p := range read {
		if p.err != nil {
			return "", p.err
		}
		if err := ctx.Err(); err != nil {
			return "", err
		}
		h.Write(p.buf)
		done += int64(len(p.buf))
		free <- p.buf[:cap(p.buf)]
		progress.Report("verify", done, total)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// flushBuffers drops the device's buffer cache (BLKFLSBUF), so a later read
// comes from the medium, not from memory.
func flushBuffers(f *os.File) error {
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("BLKFLSBUF: %w", err)
	}
	return nil
}

// rereadPartitions asks the kernel to re-read the partition table
// (BLKRRPART). A loop device without partition scanning says EINVAL; that
// is not a failed flash.
func rereadPartitions(path string) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
}

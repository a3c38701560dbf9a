package sshdev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// WriteResult is the proof of a whole-device write.
type WriteResult struct {
	Device         string  `json:"device"`
	Path           string  `json:"path"`
	ImageSize      int64   `json:"image_size"`
	BytesWritten   int64   `json:"bytes_written"` // mapped bytes: holes are skipped
	Ranges         int     `json:"ranges"`
	ArtifactSHA256 string  `json:"artifact_sha256"` // of the whole file as read (.img or .img.xz)
	ImageSHA256    string  `json:"image_sha256"`    // of the written ranges, in order
	DeviceSHA256   string  `json:"device_sha256"`   // the device's own hash of the same ranges
	Verified       bool    `json:"verified"`
	Seconds        float64 `json:"seconds"`
}

// WriteDevice opens the image at imgPath and writes it with WriteImage.
func WriteDevice(ctx context.Context, r ssh.Runner, devPath, imgPath string, bm *disk.Bmap, progress func(done, total int64)) (*WriteResult, error) {
	f, err := os.Open(imgPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return WriteImage(ctx, r, devPath, imgPath, f, bm, progress)
}

// WriteImage streams a disk image (.img, or .img.xz when name ends in
// .xz) read once from src to the block device at devPath on the device:
// only the ranges the bmap lists (every byte without one), in one session,
// with stock tools. Every byte of the image is read and checked on the way:
// bytes the bmap leaves out must be zeros and each range must match its
// checksum (disk.Bmap.Stream), so a short or stale bmap stops the write
// instead of being reported verified. Then the device hashes exactly the
// written ranges, read with O_DIRECT past its page cache, and the hash must
// equal the image's. The result carries the SHA-256 of the whole artifact
// as read: the caller compares it with the one its trust check saw.
func WriteImage(ctx context.Context, r ssh.Runner, devPath, name string, src io.Reader, bm *disk.Bmap, progress func(done, total int64)) (*WriteResult, error) {
	start := time.Now()
	art := sha256.New()
	var in io.Reader = io.TeeReader(src, art)
	size := int64(-1)
	if strings.HasSuffix(name, ".xz") {
		xr := image.NewXZReader(in, 0)
		defer xr.Close()
		in = xr
	} else if st, ok := src.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil {
			size = fi.Size()
		}
	}
	if bm == nil {
		if size < 0 {
			return nil, fmt.Errorf("%s: a compressed image needs its bmap (or its size): give --bmap", name)
		}
		bm = disk.WholeImage(size)
	} else if size >= 0 && size != bm.ImageSize {
		return nil, fmt.Errorf("%s is %d bytes but its bmap says %d", name, size, bm.ImageSize)
	}
	res := &WriteResult{Path: devPath, ImageSize: bm.ImageSize, Ranges: len(bm.Ranges), BytesWritten: bm.Mapped()}
	var write, hash strings.Builder
	write.WriteString("set -e\n")
	hash.WriteString("{ ")
	for _, rg := range bm.Ranges {
		off, n := rg.Offset(bm.BlockSize, bm.ImageSize)
		if off%512 != 0 || n%512 != 0 {
			return nil, fmt.Errorf("%s: range at %d+%d is not whole 512-byte sectors (a disk image's size is a multiple of 512)", name, off, n)
		}
		fmt.Fprintf(&write, "dd of=%s bs=1048576 iflag=fullblock,count_bytes count=%d oflag=seek_bytes seek=%d conv=notrunc status=none\n", quote(devPath), n, off)
		fmt.Fprintf(&hash, "dd if=%s bs=1048576 iflag=direct,skip_bytes,count_bytes skip=%d count=%d status=none; ", quote(devPath), off, n)
	}
	write.WriteString("sync\n")
	hash.WriteString("} | sha256sum")

	// Stream the mapped ranges into the device's dd commands.
	pr, pw := io.Pipe()
	type streamed struct {
		sum string
		err error
	}
	sum := make(chan streamed, 1)
	go func() {
		var sent int64
		s, err := bm.Stream(in, func(_ int64, p []byte) error {
			if _, err := pw.Write(p); err != nil {
				return err
			}
			sent += int64(len(p))
			if progress != nil {
				progress(sent, res.BytesWritten)
			}
			return nil
		})
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
			pw.CloseWithError(err)
		} else {
			pw.Close()
		}
		sum <- streamed{s, err}
	}()
	d := &device{r: r}
	werr := d.run(ctx, "sh -c "+quote(write.String()), pr, nil)
	pr.CloseWithError(io.ErrClosedPipe)
	st := <-sum
	switch {
	case st.err != nil: // the image or its bmap is bad: what reached the device is not it
		return res, fmt.Errorf("write %s: %w", devPath, st.err)
	case werr != nil:
		return res, fmt.Errorf("write %s: %w", devPath, werr)
	}
	res.ImageSHA256 = st.sum
	res.ArtifactSHA256 = hex.EncodeToString(art.Sum(nil))
	out, err := d.output(ctx, hash.String())
	if err != nil {
		return res, fmt.Errorf("hash %s: %w", devPath, err)
	}
	if fs := strings.Fields(out); len(fs) > 0 {
		res.DeviceSHA256 = fs[0]
	}
	res.Seconds = time.Since(start).Seconds()
	if res.DeviceSHA256 != res.ImageSHA256 {
		return res, fmt.Errorf("%s: device sha256 %s, image %s: %w", devPath, res.DeviceSHA256, res.ImageSHA256, errVerify)
	}
	res.Verified = true
	return res, nil
}

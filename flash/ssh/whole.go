package ssh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"kiln.dev/kiln/image"
)

// WriteResult is the proof of a whole-device write.
type WriteResult struct {
	Device       string  `json:"device"`
	Path         string  `json:"path"`
	ImageSize    int64   `json:"image_size"`
	BytesWritten int64   `json:"bytes_written"` // mapped bytes: holes are skipped
	Ranges       int     `json:"ranges"`
	ImageSHA256  string  `json:"image_sha256"`  // of the written ranges, in order
	DeviceSHA256 string  `json:"device_sha256"` // the device's own hash of the same ranges
	Verified     bool    `json:"verified"`
	Seconds      float64 `json:"seconds"`
}

// WriteDevice streams a disk image (.img or .img.xz) to the block device at
// devPath on the device: only the ranges the bmap lists (every byte without
// one), in one session, with stock tools. Then the device hashes exactly those
// ranges, read with O_DIRECT past its page cache, and the hash must equal the
// image's. A range whose bytes differ from the bmap's checksum stops the write.
func WriteDevice(ctx context.Context, r Runner, devPath, imgPath string, bm *image.Bmap, progress func(done, total int64)) (*WriteResult, error) {
	start := time.Now()
	f, err := os.Open(imgPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var src io.Reader = f
	size := int64(-1)
	if strings.HasSuffix(imgPath, ".xz") {
		xr := image.NewXZReader(f, 0)
		defer xr.Close()
		src = xr
	} else if st, err := f.Stat(); err == nil {
		size = st.Size()
	}
	if bm == nil {
		if size < 0 {
			return nil, fmt.Errorf("%s: a compressed image needs its bmap (or its size): give --bmap", imgPath)
		}
		bm = &image.Bmap{ImageSize: size, BlockSize: 512, Ranges: []image.BmapRange{{First: 0, Last: (size+511)/512 - 1}}}
	} else if size >= 0 && size != bm.ImageSize {
		return nil, fmt.Errorf("%s is %d bytes but its bmap says %d", imgPath, size, bm.ImageSize)
	}
	res := &WriteResult{Path: devPath, ImageSize: bm.ImageSize, Ranges: len(bm.Ranges)}
	var write, hash strings.Builder
	write.WriteString("set -e\n")
	hash.WriteString("{ ")
	var total int64
	for _, rg := range bm.Ranges {
		off, n := rg.Offset(bm.BlockSize, bm.ImageSize)
		total += n
		fmt.Fprintf(&write, "dd of=%s bs=1048576 iflag=fullblock,count_bytes count=%d oflag=seek_bytes seek=%d conv=notrunc status=none\n", quote(devPath), n, off)
		fmt.Fprintf(&hash, "dd if=%s bs=1048576 iflag=direct,skip_bytes,count_bytes skip=%d count=%d status=none; ", quote(devPath), off, n)
		if off%512 != 0 || n%512 != 0 {
			return nil, fmt.Errorf("%s: range at %d+%d is not whole 512-byte sectors (a disk image's size is a multiple of 512)", imgPath, off, n)
		}
	}
	write.WriteString("sync\n")
	hash.WriteString("} | sha256sum")
	res.BytesWritten = total

	// Stream the mapped ranges into the device's dd commands.
	pr, pw := io.Pipe()
	imgHash := sha256.New()
	go func() {
		pos := int64(0)
		var sent int64
		buf := make([]byte, 1<<20)
		for _, rg := range bm.Ranges {
			off, n := rg.Offset(bm.BlockSize, bm.ImageSize)
			if _, err := io.CopyN(io.Discard, src, off-pos); err != nil {
				pw.CloseWithError(fmt.Errorf("%s: read: %w", imgPath, err))
				return
			}
			rh := sha256.New()
			for left := n; left > 0; {
				k := min(int64(len(buf)), left)
				if _, err := io.ReadFull(src, buf[:k]); err != nil {
					pw.CloseWithError(fmt.Errorf("%s: read: %w", imgPath, err))
					return
				}
				rh.Write(buf[:k])
				imgHash.Write(buf[:k])
				if _, err := pw.Write(buf[:k]); err != nil {
					return
				}
				left -= k
				sent += k
				if progress != nil {
					progress(sent, total)
				}
			}
			if rg.SHA256 != "" && hex.EncodeToString(rh.Sum(nil)) != rg.SHA256 {
				pw.CloseWithError(fmt.Errorf("%s: blocks %d-%d do not match the bmap's checksum: the image is corrupt", imgPath, rg.First, rg.Last))
				return
			}
			pos = off + n
		}
		pw.Close()
	}()
	d := &device{r: r}
	if err := d.run(ctx, "sh -c "+quote(write.String()), pr, nil); err != nil {
		pr.CloseWithError(err)
		return res, fmt.Errorf("write %s: %w", devPath, err)
	}
	res.ImageSHA256 = hex.EncodeToString(imgHash.Sum(nil))
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

package flash

import (
	"context"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/image/disk"
)

// DiskTarget is a back end that takes whole disk images: a block device of
// this machine (flash/blockdev) or one on a device reached over SSH
// (flash/sshdev). A disk image is gigabytes and mostly holes, so it does
// not fit Target's in-memory Image: it streams through once, and the proof
// is the device's own hash of the written ranges (what Hasher is for
// firmware). WriteDisk drives one.
type DiskTarget interface {
	// WriteDisk writes the ranges bm maps, reading src — the plain image,
	// start to end — once and checking it against bm on the way
	// (disk.Bmap.Stream: bytes outside the ranges must be zeros, each range
	// must match its checksum). It returns the SHA-256 of the written
	// ranges, in order, as they went out.
	WriteDisk(ctx context.Context, src io.Reader, bm *disk.Bmap, p Progress) (string, error)
	// HashDisk returns the device's SHA-256 of bm's ranges, in order, read
	// past any cache.
	HashDisk(ctx context.Context, bm *disk.Bmap, p Progress) (string, error)
	// Close releases the device.
	Close() error
}

// DiskResult is the proof of a whole-disk write, the same for every disk
// back end.
type DiskResult struct {
	ImageSize    int64   `json:"image_size"`
	BytesWritten int64   `json:"bytes_written"` // mapped bytes: holes are skipped
	Ranges       int     `json:"ranges"`
	ImageSHA256  string  `json:"image_sha256"`  // of the written ranges, in order
	DeviceSHA256 string  `json:"device_sha256"` // the device's hash of the same ranges
	Verified     bool    `json:"verified"`
	WriteSec     float64 `json:"write_seconds"`
	VerifySec    float64 `json:"verify_seconds"`
}

// WriteDisk writes the plain image src through t as bm maps it (nil: every
// byte; then size is the image's length) and proves it: the device's hash
// of the written ranges must equal the image's, else ErrVerify.
func WriteDisk(ctx context.Context, t DiskTarget, src io.Reader, size int64, bm *disk.Bmap, p Progress) (*DiskResult, error) {
	if bm == nil {
		bm = disk.WholeImage(size)
	}
	res := &DiskResult{ImageSize: bm.ImageSize, Ranges: len(bm.Ranges), BytesWritten: bm.Mapped()}
	start := time.Now()
	sum, err := t.WriteDisk(ctx, src, bm, p)
	res.WriteSec = time.Since(start).Seconds()
	if err != nil {
		return res, err
	}
	res.ImageSHA256 = sum
	start = time.Now()
	res.DeviceSHA256, err = t.HashDisk(ctx, bm, p)
	res.VerifySec = time.Since(start).Seconds()
	if err != nil {
		return res, err
	}
	if res.DeviceSHA256 != res.ImageSHA256 {
		return res, fmt.Errorf("device sha256 %s, image sha256 %s: %w", res.DeviceSHA256, res.ImageSHA256, ErrVerify)
	}
	res.Verified = true
	return res, nil
}

package flash

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"
)

// Progress is told how far long work has come. done and total are bytes;
// phase is "erase", "write", "read" or "verify". It may be nil.
type Progress func(phase string, done, total int64)

// Note is how kiln's packages tell the user something that is not an
// error (a port without modem lines, a retried block): printf-style, and
// the only note signature in kiln. It may be nil.
type Note func(format string, args ...any)

// Printf calls n if it is not nil.
func (n Note) Printf(format string, args ...any) {
	if n != nil {
		n(format, args...)
	}
}

// Report calls p if it is not nil.
func (p Progress) Report(phase string, done, total int64) {
	if p != nil {
		p(phase, done, total)
	}
}

// Target is a device a back end can write and read.
type Target interface {
	// Write erases what the image needs and programs it.
	Write(ctx context.Context, img *Image, p Progress) error
	// ReadBack reads a region of the device's memory.
	ReadBack(ctx context.Context, r Region, p Progress) ([]byte, error)
}

// Hasher is implemented by targets that hash their own memory (a device
// that can run sha256 over what it holds: ssh, a block device, an on-chip
// MD5 later). Verify then compares the device's hash of the image's
// regions, in order, with the image's, instead of reading the bytes back.
type Hasher interface {
	// HashRegions returns the hex SHA-256 of the regions' bytes on the
	// device, concatenated in order.
	HashRegions(ctx context.Context, rs []Region) (string, error)
}

// Identifier is implemented by targets that can name the device they talk to
// (an AVR signature, an STM32 product and unique ID, a Pi serial).
type Identifier interface {
	Identity() string
}

// Result is the proof a flash or a verify ends with.
type Result struct {
	Device       string        `json:"device,omitempty"`
	ImageSHA256  string        `json:"image_sha256"`
	DeviceSHA256 string        `json:"device_sha256"`
	Bytes        int           `json:"bytes"`
	Verified     bool          `json:"verified"`
	WriteTime    time.Duration `json:"write_ns,omitempty"`
	VerifyTime   time.Duration `json:"verify_ns"`
}

// Program writes img to t and proves it by reading it back. It returns
// ErrVerify when the device's content differs from the image; it never
// returns a nil error without a matching read-back.
func Program(ctx context.Context, t Target, img *Image, p Progress) (Result, error) {
	start := time.Now()
	if err := t.Write(ctx, img, p); err != nil {
		return Result{ImageSHA256: img.SHA256(), Bytes: img.Size()}, err
	}
	wrote := time.Since(start)
	res, err := Verify(ctx, t, img, p)
	res.WriteTime = wrote
	return res, err
}

// Verify reads back every segment of img from t and compares the hashes.
func Verify(ctx context.Context, t Target, img *Image, p Progress) (Result, error) {
	start := time.Now()
	res := Result{ImageSHA256: img.SHA256(), Bytes: img.Size()}
	if id, ok := t.(Identifier); ok {
		res.Device = id.Identity()
	}
	if hs, ok := t.(Hasher); ok {
		p.Report("verify", 0, int64(img.Size()))
		sum, err := hs.HashRegions(ctx, img.Regions())
		if err != nil {
			return res, fmt.Errorf("hash on the device: %w", err)
		}
		res.DeviceSHA256, res.VerifyTime = sum, time.Since(start)
		p.Report("verify", int64(img.Size()), int64(img.Size()))
		if sum != res.ImageSHA256 {
			return res, fmt.Errorf("device sha256 %s, image sha256 %s: %w", sum, res.ImageSHA256, ErrVerify)
		}
		res.Verified = true
		return res, nil
	}
	dev, err := ReadImage(ctx, t, img.Regions(), p.phase("verify"))
	if err != nil {
		return res, err
	}
	h := sha256.New()
	firstDiff, diffAddr := -1, uint32(0)
	for i, s := range img.Segments {
		got := dev.Segments[i].Data
		h.Write(got)
		if firstDiff < 0 && !bytes.Equal(got, s.Data) {
			for j := range got {
				if got[j] != s.Data[j] {
					firstDiff, diffAddr = j, s.Addr+uint32(j)
					break
				}
			}
		}
	}
	res.DeviceSHA256 = hex.EncodeToString(h.Sum(nil))
	res.VerifyTime = time.Since(start)
	if res.DeviceSHA256 != res.ImageSHA256 {
		return res, fmt.Errorf("first difference at 0x%x: device sha256 %s, image sha256 %s: %w", diffAddr, res.DeviceSHA256, res.ImageSHA256, ErrVerify)
	}
	res.Verified = true
	return res, nil
}

// ReadImage reads every region back from t, in order, into an image of
// the device's bytes (one segment per region; regions may be adjacent).
// Progress counts bytes over all regions under the phase "read".
func ReadImage(ctx context.Context, t Target, rs []Region, p Progress) (*Image, error) {
	total := int64(0)
	for _, r := range rs {
		total += int64(r.Size)
	}
	dev := &Image{Source: "device"}
	done := int64(0)
	for _, r := range rs {
		base := done
		got, err := t.ReadBack(ctx, r, func(_ string, d, _ int64) {
			p.Report("read", base+d, total)
		})
		if err != nil {
			return nil, fmt.Errorf("read back 0x%x+%d: %w", r.Addr, r.Size, err)
		}
		if len(got) != r.Size {
			return nil, fmt.Errorf("read back 0x%x: got %d bytes, want %d: %w", r.Addr, len(got), r.Size, ErrVerify)
		}
		dev.Segments = append(dev.Segments, Segment{Addr: r.Addr, Data: got})
		done += int64(r.Size)
		p.Report("read", done, total)
	}
	return dev, nil
}

// phase returns a Progress that reports under phase instead.
func (p Progress) phase(phase string) Progress {
	if p == nil {
		return nil
	}
	return func(_ string, done, total int64) { p(phase, done, total) }
}

package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrBmap means a bmap does not describe its image: a range's checksum
// differs, or bytes it leaves out are not zeros.
var ErrBmap = errors.New("bmap does not match the image")

// ErrNoBmap means a compressed image came without its bmap: its plain
// length is not known until it has been read, so a writer can neither
// skip its holes nor check that it is whole.
var ErrNoBmap = errors.New("a compressed image needs its bmap")

// Bmap is a parsed bmaptool block map: which blocks of an image hold data.
type Bmap struct {
	ImageSize int64
	BlockSize int64
	Ranges    []BmapRange
}

// BmapRange is a run of mapped blocks with the SHA-256 of their bytes.
type BmapRange struct {
	First, Last int64 // block numbers, inclusive
	SHA256      string
}

// Offset returns the range's byte offset and length in an image of size bytes.
func (r BmapRange) Offset(blockSize, size int64) (int64, int64) {
	start := r.First * blockSize
	return start, min((r.Last+1)*blockSize, size) - start
}

// Mapped is the number of bytes the ranges cover.
func (b *Bmap) Mapped() int64 {
	var n int64
	for _, r := range b.Ranges {
		_, k := r.Offset(b.BlockSize, b.ImageSize)
		n += k
	}
	return n
}

// Bounds on bmaps kiln reads.
const (
	maxBmapFile  = 64 << 20
	maxImageSize = 1 << 50
	maxBlockSize = 1 << 30
)

// ReadBmap parses a bmap (format 1.x or 2.0 with sha256 checksums).
func ReadBmap(r io.Reader) (*Bmap, error) {
	var doc struct {
		Version   string `xml:"version,attr"`
		ImageSize string `xml:"ImageSize"`
		BlockSize string `xml:"BlockSize"`
		Checksum  string `xml:"ChecksumType"`
		Ranges    []struct {
			Sum  string `xml:"chksum,attr"`
			Text string `xml:",chardata"`
		} `xml:"BlockMap>Range"`
	}
	if err := xml.NewDecoder(io.LimitReader(r, maxBmapFile)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("bmap: %w", err)
	}
	if !strings.HasPrefix(doc.Version, "1.") && !strings.HasPrefix(doc.Version, "2.") {
		return nil, fmt.Errorf("bmap: unsupported version %q", doc.Version)
	}
	if ct := strings.TrimSpace(doc.Checksum); ct != "" && ct != "sha256" {
		return nil, fmt.Errorf("bmap: checksum type %q (kiln reads sha256)", ct)
	}
	b := &Bmap{}
	var err error
	if b.ImageSize, err = strconv.ParseInt(strings.TrimSpace(doc.ImageSize), 10, 64); err != nil || b.ImageSize < 0 || b.ImageSize > maxImageSize {
		return nil, fmt.Errorf("bmap: image size %q", strings.TrimSpace(doc.ImageSize))
	}
	if b.BlockSize, err = strconv.ParseInt(strings.TrimSpace(doc.BlockSize), 10, 64); err != nil || b.BlockSize <= 0 || b.BlockSize > maxBlockSize {
		return nil, fmt.Errorf("bmap: block size %q", strings.TrimSpace(doc.BlockSize))
	}
	blocks := (b.ImageSize + b.BlockSize - 1) / b.BlockSize
	next := int64(0)
	for _, rg := range doc.Ranges {
		s := strings.TrimSpace(rg.Text)
		lo, hi, found := strings.Cut(s, "-")
		first, err1 := strconv.ParseInt(strings.TrimSpace(lo), 10, 64)
		last := first
		var err2 error
		if found {
			last, err2 = strconv.ParseInt(strings.TrimSpace(hi), 10, 64)
		}
		if err1 != nil || err2 != nil || first < next || last < first || last >= blocks {
			return nil, fmt.Errorf("bmap: bad or unordered range %q", s)
		}
		sum := strings.ToLower(strings.TrimSpace(rg.Sum))
		if _, err := hex.DecodeString(sum); err != nil || (sum != "" && len(sum) != 64) {
			return nil, fmt.Errorf("bmap: range %q: bad sha256 %q", s, rg.Sum)
		}
		b.Ranges = append(b.Ranges, BmapRange{First: first, Last: last, SHA256: sum})
		next = last + 1
	}
	return b, nil
}

// WholeImage is the bmap of an image with every block mapped, for images
// that come without one.
func WholeImage(size int64) *Bmap {
	if size == 0 {
		return &Bmap{BlockSize: SectorSize}
	}
	return &Bmap{ImageSize: size, BlockSize: SectorSize, Ranges: []BmapRange{{First: 0, Last: (size+SectorSize-1)/SectorSize - 1}}}
}

// BmapFor returns the bmap a whole-disk write of the image name follows.
// size is the plain image's length when it is known (an uncompressed
// file), else -1 (a compressed stream). With a bmap, a known size must be
// its ImageSize (else ErrBmap); without one, a known size maps every byte
// (WholeImage) and an unknown one is ErrNoBmap. Both refusals come before
// a byte of the image is read.
func BmapFor(name string, size int64, bm *Bmap) (*Bmap, error) {
	switch {
	case bm == nil && size < 0:
		return nil, fmt.Errorf("%s: %w", name, ErrNoBmap)
	case bm == nil:
		return WholeImage(size), nil
	case size >= 0 && size != bm.ImageSize:
		return nil, fmt.Errorf("%w: %s is %d bytes, its bmap says %d", ErrBmap, name, size, bm.ImageSize)
	}
	return bm, nil
}

// Stream reads the whole image from r, exactly b.ImageSize bytes, and
// hands the bytes of each mapped range to emit, in order. Everything a
// bmap leaves out must be zeros (a writer skips it, so the device would
// hold something else) and every range must match its checksum; otherwise
// Stream stops with ErrBmap before emitting the offending range's last
// chunk. It returns the SHA-256 of all mapped bytes, in order.
func (b *Bmap) Stream(r io.Reader, emit func(off int64, p []byte) error) (string, error) {
	buf, zero := make([]byte, 1<<20), make([]byte, 1<<20)
	mapped := sha256.New()
	pos := int64(0)
	zeros := func(n int64) error {
		for n > 0 {
			k := min(int64(len(buf)), n)
			if _, err := io.ReadFull(r, buf[:k]); err != nil {
				return b.short(err)
			}
			if !bytes.Equal(buf[:k], zero[:k]) {
				i := 0
				for buf[i] == 0 {
					i++
				}
				return fmt.Errorf("%w: byte %d holds data but no bmap range covers it", ErrBmap, pos+int64(i))
			}
			pos += k
			n -= k
		}
		return nil
	}
	for _, rg := range b.Ranges {
		off, n := rg.Offset(b.BlockSize, b.ImageSize)
		if err := zeros(off - pos); err != nil {
			return "", err
		}
		h := sha256.New()
		for left := n; left > 0; {
			k := min(int64(len(buf)), left)
			if _, err := io.ReadFull(r, buf[:k]); err != nil {
				return "", b.short(err)
			}
			h.Write(buf[:k])
			mapped.Write(buf[:k])
			left -= k
			if left == 0 && rg.SHA256 != "" && hex.EncodeToString(h.Sum(nil)) != rg.SHA256 {
				return "", fmt.Errorf("%w: blocks %d-%d differ from the bmap's checksum", ErrBmap, rg.First, rg.Last)
			}
			if err := emit(pos, buf[:k]); err != nil {
				return "", err
			}
			pos += k
		}
	}
	if err := zeros(b.ImageSize - pos); err != nil {
		return "", err
	}
	var one [1]byte
	if k, _ := io.ReadFull(r, one[:]); k != 0 {
		return "", fmt.Errorf("%w: the image is longer than the bmap's %d bytes", ErrBmap, b.ImageSize)
	}
	return hex.EncodeToString(mapped.Sum(nil)), nil
}

// short is Stream's error for a read that failed before ImageSize bytes:
// an image that ends early does not match its bmap (ErrBmap); any other
// read error (a decompressor's, the disk's) is passed on as it is.
func (b *Bmap) short(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: the image is shorter than the bmap's %d bytes", ErrBmap, b.ImageSize)
	}
	return fmt.Errorf("image shorter than the bmap's %d bytes: %w", b.ImageSize, err)
}

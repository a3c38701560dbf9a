package image

import (
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"strings"
)

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
	if err := xml.NewDecoder(r).Decode(&doc); err != nil {
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
	if b.ImageSize, err = strconv.ParseInt(strings.TrimSpace(doc.ImageSize), 10, 64); err != nil {
		return nil, fmt.Errorf("bmap: image size: %w", err)
	}
	if b.BlockSize, err = strconv.ParseInt(strings.TrimSpace(doc.BlockSize), 10, 64); err != nil || b.BlockSize <= 0 {
		return nil, fmt.Errorf("bmap: block size %q", doc.BlockSize)
	}
	blocks := (b.ImageSize + b.BlockSize - 1) / b.BlockSize
	next := int64(0)
	for _, rg := range doc.Ranges {
		s := strings.TrimSpace(rg.Text)
		lo, hi, found := strings.Cut(s, "-")
		first, err1 := strconv.ParseInt(lo, 10, 64)
		last := first
		var err2 error
		if found {
			last, err2 = strconv.ParseInt(hi, 10, 64)
		}
		if err1 != nil || err2 != nil || first < next || last < first || last >= blocks {
			return nil, fmt.Errorf("bmap: bad or unordered range %q", s)
		}
		b.Ranges = append(b.Ranges, BmapRange{First: first, Last: last, SHA256: rg.Sum})
		next = last + 1
	}
	return b, nil
}

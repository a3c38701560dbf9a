package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// WriteBmap writes a bmaptool block map (format 2.0, sha256) of the size-byte
// image read from img, listing the blocks for which mapped is true. Writers
// such as bmaptool copy only those blocks and verify each range's checksum.
func WriteBmap(w io.Writer, img io.ReaderAt, size int64, mapped []bool) error {
	blocks := (size + BlockSize - 1) / BlockSize
	if int64(len(mapped)) != blocks {
		return fmt.Errorf("bmap: %d block flags for %d blocks", len(mapped), blocks)
	}
	var ranges strings.Builder
	count := 0
	buf := make([]byte, 1<<20)
	for b := int64(0); b < blocks; {
		if !mapped[b] {
			b++
			continue
		}
		e := b
		for e+1 < blocks && mapped[e+1] {
			e++
		}
		h := sha256.New()
		start, end := b*BlockSize, min((e+1)*BlockSize, size)
		for off := start; off < end; {
			n := min(int64(len(buf)), end-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("bmap: read image: %w", err)
			}
			h.Write(buf[:n])
			off += n
		}
		r := fmt.Sprint(b)
		if e > b {
			r = fmt.Sprintf("%d-%d", b, e)
		}
		fmt.Fprintf(&ranges, "        <Range chksum=\"%s\"> %s </Range>\n", hex.EncodeToString(h.Sum(nil)), r)
		count += int(e - b + 1)
		b = e + 1
	}
	zeros := strings.Repeat("0", 64)
	doc := fmt.Sprintf(`<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device. Written by kiln. -->
<bmap version="2.0">
    <!-- Image size in bytes: %s -->
    <ImageSize> %d </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> %d </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> %d </BlocksCount>

    <!-- Count of mapped blocks: %s or %.1f%% -->
    <MappedBlocksCount> %d </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The checksum of this bmap file. When it is calculated, the value of
         the checksum has be zero (all ASCII "0" symbols).  -->
    <BmapFileChecksum> %s </BmapFileChecksum>

    <!-- The block map which consists of elements which may either be a
         range of blocks or a single block. The 'chksum' attribute
         (if present) is the checksum of this blocks range. -->
    <BlockMap>
%s    </BlockMap>
</bmap>
`, humanSize(size), size, BlockSize, blocks, humanSize(int64(count)*BlockSize),
		100*float64(count)/float64(max(blocks, 1)), count, zeros, ranges.String())
	sum := sha256.Sum256([]byte(doc))
	out := bytes.Replace([]byte(doc), []byte(zeros), []byte(hex.EncodeToString(sum[:])), 1)
	if _, err := w.Write(out); err != nil {
		return fmt.Errorf("bmap: write: %w", err)
	}
	return nil
}

func humanSize(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

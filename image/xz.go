package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/ulikunitz/xz"
)

// ErrXZ is returned for .xz data kiln cannot parse.
var ErrXZ = errors.New("malformed xz data")

// XZOptions tune CompressXZ.
type XZOptions struct {
	BlockSize int // uncompressed bytes per block; default 8 MiB
	Workers   int // parallel compressors; default GOMAXPROCS
}

const (
	xzCheckCRC64   = 0x04
	xzCheckSize    = 8
	defaultXZBlock = 8 << 20
)

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// xzBlock is one compressed block ready to be placed in the stream.
type xzBlock struct {
	data         []byte // block header with sizes + compressed data + padding + check
	unpadded     uint64
	uncompressed uint64
}

// CompressXZ compresses src into dst as a single .xz stream made of
// independent blocks of opts.BlockSize bytes, compressed in parallel with
// ulikunitz/xz (which is single-threaded). Each block header records its
// compressed and uncompressed size, as xz -T does, so readers can also
// decompress in parallel; the stream's index lists every block. xz-utils,
// Python's lzma (bmaptool) and ulikunitz/xz read the result. The output
// depends only on the input and the block size, not on the worker count.
func CompressXZ(ctx context.Context, dst io.Writer, src io.Reader, opts XZOptions) error {
	bs := opts.BlockSize
	if bs <= 0 {
		bs = defaultXZBlock
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	type job struct {
		in   []byte
		out  []xzBlock
		err  error
		done chan struct{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan *job)
	order := make(chan *job, 2*workers)
	var readErr error
	go func() { // reader: chunks in order
		defer close(order)
		defer close(jobs)
		for {
			buf := make([]byte, bs)
			n, err := io.ReadFull(src, buf)
			if n > 0 {
				j := &job{in: buf[:n], done: make(chan struct{})}
				select {
				case order <- j:
				case <-ctx.Done():
					return
				}
				select {
				case jobs <- j:
				case <-ctx.Done():
					return
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	for w := 0; w < workers; w++ {
		go func() {
			for j := range jobs {
				j.out, j.err = compressBlock(j.in, bs)
				j.in = nil
				close(j.done)
			}
		}()
	}
	if _, err := dst.Write(xzStreamHeader()); err != nil {
		return fmt.Errorf("xz: write: %w", err)
	}
	var records []xzBlock
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if j.err != nil {
			return fmt.Errorf("xz: compress: %w", j.err)
		}
		for _, b := range j.out {
			if _, err := dst.Write(b.data); err != nil {
				return fmt.Errorf("xz: write: %w", err)
			}
			records = append(records, xzBlock{unpadded: b.unpadded, uncompressed: b.uncompressed})
		}
	}
	if readErr != nil {
		return fmt.Errorf("xz: read input: %w", readErr)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := dst.Write(xzIndexAndFooter(records)); err != nil {
		return fmt.Errorf("xz: write: %w", err)
	}
	return nil
}

func xzStreamHeader() []byte {
	h := append([]byte{}, xzMagic...)
	h = append(h, 0x00, xzCheckCRC64)
	return binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(h[6:8]))
}

func xzIndexAndFooter(records []xzBlock) []byte {
	idx := []byte{0x00}
	idx = binary.AppendUvarint(idx, uint64(len(records)))
	for _, r := range records {
		idx = binary.AppendUvarint(idx, r.unpadded)
		idx = binary.AppendUvarint(idx, r.uncompressed)
	}
	for len(idx)%4 != 0 {
		idx = append(idx, 0)
	}
	idx = binary.LittleEndian.AppendUint32(idx, crc32.ChecksumIEEE(idx))
	foot := make([]byte, 12)
	binary.LittleEndian.PutUint32(foot[4:], uint32(len(idx)/4-1))
	foot[8], foot[9] = 0x00, xzCheckCRC64
	binary.LittleEndian.PutUint32(foot[0:], crc32.ChecksumIEEE(foot[4:10]))
	foot[10], foot[11] = 'Y', 'Z'
	return append(idx, foot...)
}

// zeroBlocks caches the compressed form of all-zero chunks by length: most
// of a disk image is zero, and compressing the same zeros again gives the
// same bytes.
var zeroBlocks sync.Map // int → []xzBlock

// compressBlock compresses in as a one-stream .xz with ulikunitz/xz and lifts
// its block(s) out, rewriting each block header to carry both sizes.
func compressBlock(in []byte, blockSize int) ([]xzBlock, error) {
	if !allZero(in) {
		return compressChunk(in, blockSize)
	}
	key := [2]int{len(in), blockSize}
	if v, ok := zeroBlocks.Load(key); ok {
		return v.([]xzBlock), nil
	}
	out, err := compressChunk(in, blockSize)
	if err == nil {
		zeroBlocks.Store(key, out)
	}
	return out, err
}

func compressChunk(in []byte, blockSize int) ([]xzBlock, error) {
	var buf bytes.Buffer
	dict := min(blockSize, 8<<20)
	if dict < 4096 {
		dict = 4096
	}
	w, err := xz.WriterConfig{DictCap: dict, CheckSum: xz.CRC64, BlockSize: int64(blockSize)}.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(in); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	s := buf.Bytes()
	if len(s) < 24 || !bytes.Equal(s[:6], xzMagic) || s[7] != xzCheckCRC64 {
		return nil, fmt.Errorf("unexpected stream from the compressor: %w", ErrXZ)
	}
	back := (int(binary.LittleEndian.Uint32(s[len(s)-8:])) + 1) * 4
	idxStart := len(s) - 12 - back
	if idxStart < 12 {
		return nil, ErrXZ
	}
	recs, err := parseXZIndex(s[idxStart : len(s)-12])
	if err != nil {
		return nil, err
	}
	pos := 12
	var out []xzBlock
	for _, r := range recs {
		padded := int((r.unpadded + 3) &^ 3)
		if pos+padded > idxStart {
			return nil, ErrXZ
		}
		b, err := rewriteBlock(s[pos:pos+padded], r)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
		pos += padded
	}
	if pos != idxStart {
		return nil, ErrXZ
	}
	return out, nil
}

type blockHeader struct {
	size         int // header bytes
	compressed   int64
	uncompressed int64
	filters      []byte // raw filter flags
}

func parseBlockHeader(h []byte) (blockHeader, error) {
	var bh blockHeader
	if len(h) < 1 || h[0] == 0 {
		return bh, ErrXZ
	}
	bh.size = (int(h[0]) + 1) * 4
	bh.compressed, bh.uncompressed = -1, -1
	if len(h) < bh.size {
		return bh, ErrXZ
	}
	if crc32.ChecksumIEEE(h[:bh.size-4]) != binary.LittleEndian.Uint32(h[bh.size-4:bh.size]) {
		return bh, fmt.Errorf("block header checksum: %w", ErrXZ)
	}
	flags := h[1]
	if flags&0x3c != 0 {
		return bh, fmt.Errorf("block header flags %#x: %w", flags, ErrXZ)
	}
	p := 2
	uv := func() (int64, error) {
		v, n := binary.Uvarint(h[p : bh.size-4])
		if n <= 0 {
			return 0, ErrXZ
		}
		p += n
		return int64(v), nil
	}
	var err error
	if flags&0x40 != 0 {
		if bh.compressed, err = uv(); err != nil {
			return bh, err
		}
	}
	if flags&0x80 != 0 {
		if bh.uncompressed, err = uv(); err != nil {
			return bh, err
		}
	}
	fstart := p
	for i := 0; i < int(flags&3)+1; i++ {
		if _, err := uv(); err != nil { // filter ID
			return bh, err
		}
		ps, err := uv()
		if err != nil {
			return bh, err
		}
		p += int(ps)
		if p > bh.size-4 {
			return bh, ErrXZ
		}
	}
	bh.filters = append([]byte{byte(flags & 3)}, h[fstart:p]...)
	return bh, nil
}

func rewriteBlock(b []byte, r xzBlock) (xzBlock, error) {
	bh, err := parseBlockHeader(b)
	if err != nil {
		return xzBlock{}, err
	}
	csize := int64(r.unpadded) - int64(bh.size) - xzCheckSize
	if csize <= 0 {
		return xzBlock{}, ErrXZ
	}
	hdr := []byte{0, 0xc0 | bh.filters[0]}
	hdr = binary.AppendUvarint(hdr, uint64(csize))
	hdr = binary.AppendUvarint(hdr, r.uncompressed)
	hdr = append(hdr, bh.filters[1:]...)
	for (len(hdr)+4)%4 != 0 {
		hdr = append(hdr, 0)
	}
	hdr[0] = byte((len(hdr)+4)/4 - 1)
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.ChecksumIEEE(hdr))
	data := b[bh.size : bh.size+int(csize)]
	out := append(hdr, data...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	check := b[len(b)-xzCheckSize:]
	out = append(out, check...)
	return xzBlock{data: out, unpadded: uint64(len(hdr)) + uint64(csize) + xzCheckSize, uncompressed: r.uncompressed}, nil
}

func parseXZIndex(idx []byte) ([]xzBlock, error) {
	if len(idx) < 8 || idx[0] != 0 || len(idx)%4 != 0 {
		return nil, fmt.Errorf("index: %w", ErrXZ)
	}
	if crc32.ChecksumIEEE(idx[:len(idx)-4]) != binary.LittleEndian.Uint32(idx[len(idx)-4:]) {
		return nil, fmt.Errorf("index checksum: %w", ErrXZ)
	}
	p := 1
	next := func() (uint64, error) {
		v, n := binary.Uvarint(idx[p : len(idx)-4])
		if n <= 0 {
			return 0, fmt.Errorf("index: %w", ErrXZ)
		}
		p += n
		return v, nil
	}
	n, err := next()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(idx)) {
		return nil, fmt.Errorf("index: %w", ErrXZ)
	}
	recs := make([]xzBlock, 0, n)
	for i := uint64(0); i < n; i++ {
		u, err := next()
		if err != nil {
			return nil, err
		}
		c, err := next()
		if err != nil {
			return nil, err
		}
		recs = append(recs, xzBlock{unpadded: u, uncompressed: c})
	}
	return recs, nil
}

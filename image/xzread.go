package image

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/ulikunitz/xz"
)

// NewXZReader returns a streaming reader of the .xz data in r. Blocks whose
// headers record their sizes (kiln's, and xz -T's) are decompressed in
// parallel by workers goroutines (GOMAXPROCS if ≤ 0), reading r strictly in
// order and holding only a few blocks in memory; other streams are read
// sequentially by ulikunitz/xz. Every block's check and the index are
// verified. Close stops the workers.
func NewXZReader(r io.Reader, workers int) io.ReadCloser {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	pr, pw := io.Pipe()
	x := &xzReader{src: bufio.NewReaderSize(r, 1<<20), pw: pw, workers: workers, stop: make(chan struct{})}
	go func() { pw.CloseWithError(x.run()) }()
	return &xzReadCloser{pr: pr, x: x}
}

type xzReadCloser struct {
	pr   *io.PipeReader
	x    *xzReader
	once sync.Once
}

func (c *xzReadCloser) Read(p []byte) (int, error) { return c.pr.Read(p) }
func (c *xzReadCloser) Close() error {
	c.once.Do(func() { close(c.x.stop) })
	return c.pr.Close()
}

// maxXZBlock bounds the blocks the parallel reader holds in memory: xz -T
// makes blocks of three times the dictionary, 192 MiB at -9e.
const maxXZBlock = 256 << 20

type xzReader struct {
	src     *bufio.Reader
	pw      *io.PipeWriter
	workers int
	stop    chan struct{}
}

type xzJob struct {
	block []byte
	rec   xzBlock
	out   []byte
	err   error
	done  chan struct{}
}

func (x *xzReader) run() error {
	first := true
	for {
		var hdr [12]byte
		n, err := io.ReadFull(x.src, hdr[:])
		if err == io.EOF && !first {
			return nil
		}
		if err != nil {
			return fmt.Errorf("xz: stream header: %w", ErrXZ)
		}
		if !first && bytes.Equal(hdr[:], make([]byte, 12)) {
			continue // stream padding
		}
		_ = n
		if !bytes.Equal(hdr[:6], xzMagic) || crc32.ChecksumIEEE(hdr[6:8]) != binary.LittleEndian.Uint32(hdr[8:]) || hdr[6] != 0 {
			return fmt.Errorf("xz: stream header: %w", ErrXZ)
		}
		if err := x.stream(hdr[:], first); err != nil {
			return err
		}
		first = false
	}
}

func checkSizeOf(flag byte) int {
	switch flag & 0x0f {
	case 0:
		return 0
	case 1:
		return 4
	case 4:
		return 8
	case 10:
		return 32
	}
	return -1
}

// stream decodes one stream after its header.
func (x *xzReader) stream(hdr []byte, first bool) error {
	cs := checkSizeOf(hdr[7])
	if cs < 0 {
		return fmt.Errorf("xz: unsupported check type %#x: %w", hdr[7], ErrXZ)
	}
	order := make(chan *xzJob, 2*x.workers)
	jobs := make(chan *xzJob)
	var wg sync.WaitGroup
	for i := 0; i < x.workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				j.out, j.err = decodeBlock(hdr, j.block, j.rec)
				j.block = nil
				close(j.done)
			}
		}()
	}
	writeErr := make(chan error, 1)
	var records []xzBlock
	go func() { // writer: results in order
		var err error
		for j := range order {
			<-j.done
			if err != nil {
				continue
			}
			if j.err != nil {
				err = j.err
				continue
			}
			if _, werr := x.pw.Write(j.out); werr != nil {
				err = werr
			}
		}
		writeErr <- err
	}()
	finish := func(err error) error {
		close(jobs)
		close(order)
		wg.Wait()
		if werr := <-writeErr; err == nil {
			err = werr
		}
		return err
	}
	for {
		b0, err := x.src.ReadByte()
		if err != nil {
			return finish(fmt.Errorf("xz: truncated stream: %w", ErrXZ))
		}
		if b0 == 0 { // the index
			if err := finish(nil); err != nil {
				return err
			}
			return x.index(records, hdr)
		}
		hs := (int(b0) + 1) * 4
		bh := make([]byte, hs)
		bh[0] = b0
		if _, err := io.ReadFull(x.src, bh[1:]); err != nil {
			return finish(fmt.Errorf("xz: truncated block header: %w", ErrXZ))
		}
		h, err := parseBlockHeader(bh)
		if err != nil {
			return finish(fmt.Errorf("xz: %w", err))
		}
		if h.compressed > maxXZBlock || h.uncompressed > maxXZBlock {
			return finish(fmt.Errorf("xz: a block of %d bytes (%d compressed) is larger than kiln reads at once (%d): %w", h.uncompressed, h.compressed, maxXZBlock, ErrXZ))
		}
		if h.compressed < 0 || h.uncompressed < 0 {
			if first && len(records) == 0 {
				// Not self-describing: decode the rest sequentially.
				finish(nil)
				return x.sequential(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(bh), x.src))
			}
			return finish(fmt.Errorf("xz: block without sizes after blocks with sizes: %w", ErrXZ))
		}
		body := int(h.compressed)
		pad := (4 - (hs+body)%4) % 4
		blk := make([]byte, hs+body+pad+cs)
		copy(blk, bh)
		if _, err := io.ReadFull(x.src, blk[hs:]); err != nil {
			return finish(fmt.Errorf("xz: truncated block: %w", ErrXZ))
		}
		rec := xzBlock{unpadded: uint64(hs + body + cs), uncompressed: uint64(h.uncompressed)}
		records = append(records, rec)
		j := &xzJob{block: blk, rec: rec, done: make(chan struct{})}
		select {
		case order <- j:
		case <-x.stop:
			return finish(io.ErrClosedPipe)
		}
		select {
		case jobs <- j:
		case <-x.stop:
			close(j.done)
			return finish(io.ErrClosedPipe)
		}
	}
}

// index reads and checks the index (its first byte is consumed) and footer.
func (x *xzReader) index(records []xzBlock, hdr []byte) error {
	want := xzIndexAndFooter(records)
	got := make([]byte, len(want)-1)
	if _, err := io.ReadFull(x.src, got); err != nil {
		return fmt.Errorf("xz: truncated index: %w", ErrXZ)
	}
	// Our own encoding of the records must match byte for byte, except the
	// footer's check flag, which is the stream's.
	want[len(want)-3] = hdr[7]
	binary.LittleEndian.PutUint32(want[len(want)-12:], crc32.ChecksumIEEE(want[len(want)-8:len(want)-2]))
	if !bytes.Equal(got, want[1:]) {
		return fmt.Errorf("xz: index does not match the blocks: %w", ErrXZ)
	}
	return nil
}

func (x *xzReader) sequential(r io.Reader) error {
	zr, err := xz.NewReader(r)
	if err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	if _, err := io.Copy(x.pw, zr); err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	return nil
}

// decodeBlock decodes one block by wrapping it in a one-block stream for
// ulikunitz/xz, which checks the block's check value.
func decodeBlock(hdr, block []byte, rec xzBlock) ([]byte, error) {
	var s bytes.Buffer
	s.Write(hdr)
	s.Write(block)
	tail := xzIndexAndFooter([]xzBlock{rec})
	tail[len(tail)-3] = hdr[7]
	binary.LittleEndian.PutUint32(tail[len(tail)-12:], crc32.ChecksumIEEE(tail[len(tail)-8:len(tail)-2]))
	s.Write(tail)
	zr, err := xz.ReaderConfig{SingleStream: true}.NewReader(&s)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	out := make([]byte, 0, rec.uncompressed)
	buf := bytes.NewBuffer(out)
	if _, err := io.Copy(buf, zr); err != nil {
		return nil, fmt.Errorf("xz: block: %w", err)
	}
	if uint64(buf.Len()) != rec.uncompressed {
		return nil, fmt.Errorf("xz: block size %d, header says %d: %w", buf.Len(), rec.uncompressed, ErrXZ)
	}
	return buf.Bytes(), nil
}

package image

import (
	"fmt"
	"io"
	"sync"
)

// BlockSize is the granularity of the block map (bmaptool's usual 4 KiB).
const BlockSize = 4096

// sink is the image being written. It records which blocks were written, so
// the block map lists exactly those, whatever the host filesystem does with
// holes.
type sink struct {
	w      io.WriterAt
	size   int64
	mu     sync.Mutex
	mapped []bool
}

func newSink(w io.WriterAt, size int64) *sink {
	return &sink{w: w, size: size, mapped: make([]bool, (size+BlockSize-1)/BlockSize)}
}

func (s *sink) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("image: write of %d bytes at %d outside the %d-byte disk", len(p), off, s.size)
	}
	n, err := s.w.WriteAt(p, off)
	if n > 0 {
		s.mark(off, int64(n))
	}
	return n, err
}

func (s *sink) mark(off, n int64) {
	s.mu.Lock()
	for b := off / BlockSize; b <= (off+n-1)/BlockSize; b++ {
		s.mapped[b] = true
	}
	s.mu.Unlock()
}

// section is a window [base, base+size) of a WriterAt.
type section struct {
	w    io.WriterAt
	base int64
	size int64
}

func (s *section) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("image: write of %d bytes at %d outside the %d-byte partition: %w", len(p), off, s.size, ErrNoSpace)
	}
	return s.w.WriteAt(p, s.base+off)
}

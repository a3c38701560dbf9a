package flash

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// Link gives a byte-stream protocol reads with deadlines over any
// io.ReadWriter: a serial port, a pseudo-terminal or an in-process pipe.
// A goroutine pumps bytes from the reader into a buffer; reads wait on it
// with a context and a timeout, so no protocol code blocks forever on a
// device that stopped answering.
type Link struct {
	w io.Writer

	mu   sync.Mutex
	cond chan struct{} // closed and replaced when data or an error arrives
	buf  []byte
	err  error
}

// NewLink starts reading from rw. The goroutine ends when rw's Read fails
// (close rw to stop it).
func NewLink(rw io.ReadWriter) *Link {
	l := &Link{w: rw, cond: make(chan struct{})}
	go l.pump(rw)
	return l
}

func (l *Link) pump(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		l.mu.Lock()
		l.buf = append(l.buf, buf[:n]...)
		if err != nil && n == 0 {
			l.err = err
		}
		close(l.cond)
		l.cond = make(chan struct{})
		stop := l.err != nil
		l.mu.Unlock()
		if stop {
			return
		}
	}
}

// Write sends p.
func (l *Link) Write(p []byte) (int, error) { return l.w.Write(p) }

// Discard drops every byte received so far.
func (l *Link) Discard() {
	l.mu.Lock()
	l.buf = l.buf[:0]
	l.mu.Unlock()
}

// Buffered returns how many received bytes wait to be read.
func (l *Link) Buffered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf)
}

// ReadFull fills p, waiting at most timeout (and no longer than ctx allows).
// It returns ErrNoAnswer wrapped with the count when time runs out.
func (l *Link) ReadFull(ctx context.Context, p []byte, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	got := 0
	for {
		l.mu.Lock()
		n := copy(p[got:], l.buf)
		l.buf = l.buf[:copy(l.buf, l.buf[n:])]
		got += n
		err, wait := l.err, l.cond
		l.mu.Unlock()
		if got == len(p) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		select {
		case <-wait:
		case <-timer.C:
			return fmt.Errorf("%w: got %d of %d bytes in %v", ErrNoAnswer, got, len(p), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Byte reads one byte with a timeout.
func (l *Link) Byte(ctx context.Context, timeout time.Duration) (byte, error) {
	var b [1]byte
	err := l.ReadFull(ctx, b[:], timeout)
	return b[0], err
}

package fetch

import (
	"io"
	"sync"
)

// readAhead reads r in a goroutine of its own, up to a few chunks ahead
// of its reader: a .deb's decompression (one core) overlaps with writing
// the files it holds (the other), as dpkg-deb overlaps its decompressor
// and tar processes. Close stops the goroutine and waits for it; r is not
// read after Close returns.
type readAhead struct {
	full chan []byte
	free chan []byte
	stop chan struct{}
	done chan struct{}
	cur  []byte // unread part of the chunk being read
	buf  []byte // the chunk cur points into, returned to free when read
	err  error  // r's error, valid once full is closed
	once sync.Once
}

const (
	aheadChunk  = 256 << 10
	aheadChunks = 4
)

func newReadAhead(r io.Reader) *readAhead {
	ra := &readAhead{full: make(chan []byte, aheadChunks), free: make(chan []byte, aheadChunks),
		stop: make(chan struct{}), done: make(chan struct{})}
	for range aheadChunks {
		ra.free <- make([]byte, aheadChunk)
	}
	go func() {
		defer close(ra.done)
		defer close(ra.full)
		for {
			var b []byte
			select {
			case b = <-ra.free:
			case <-ra.stop:
				return
			}
			// Not io.ReadFull: it would report a short last chunk as
			// io.ErrUnexpectedEOF, the error a decompressor gives for a
			// stream cut short, and the two must stay apart.
			n := 0
			var err error
			for n < len(b) && err == nil {
				var m int
				m, err = r.Read(b[n:])
				n += m
			}
			if n > 0 {
				select {
				case ra.full <- b[:n]:
				case <-ra.stop:
					return
				}
			}
			if err != nil {
				ra.err = err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		b, ok := <-ra.full
		if !ok {
			return 0, ra.err // set before full was closed
		}
		ra.buf, ra.cur = b, b
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops reading ahead and waits until the goroutine has stopped.
func (ra *readAhead) Close() {
	ra.once.Do(func() { close(ra.stop) })
	<-ra.done
}

package image

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"os"
	"strings"
	"sync"
)

// OpenDiskStream reads a disk image artifact as the plain image: a name
// ending in .xz is decompressed on the way. size is the plain image's
// length when src can say (an uncompressed file), else -1. artifact
// returns the SHA-256 of the bytes read from src — the artifact as read,
// which for an uncompressed image is the plain image — once the stream has
// been consumed; done stops the decompressor and the hashing. The hash is
// computed on a goroutine of its own, beside whoever reads plain.
func OpenDiskStream(name string, src io.Reader) (plain io.Reader, size int64, artifact func() string, done func()) {
	t := newHashTee(src, sha256.New())
	plain, size, artifact, done = t, -1, t.sum, t.stop
	if XZName(name) {
		xr := NewXZReader(plain, 0)
		return xr, size, artifact, func() { xr.Close(); t.stop() }
	}
	if st, ok := src.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil {
			size = fi.Size()
		}
	}
	return plain, size, artifact, done
}

// XZName says whether OpenDiskStream reads the artifact called name as
// xz-compressed.
func XZName(name string) bool { return strings.HasSuffix(name, ".xz") }

// hashTee is io.TeeReader into a hash whose writes run on a goroutine: a
// copy of each read goes to it through a small pool of buffers, so reading
// (and what the reader does with the bytes) and hashing overlap.
type hashTee struct {
	r    io.Reader
	h    hash.Hash
	ch   chan []byte
	free chan []byte
	fin  chan struct{}

	mu     sync.Mutex // a decompressor may still read while done stops the hash
	closed bool
}

func newHashTee(r io.Reader, h hash.Hash) *hashTee {
	t := &hashTee{r: r, h: h, ch: make(chan []byte, 4), free: make(chan []byte, 4), fin: make(chan struct{})}
	for range 4 {
		t.free <- make([]byte, 0, 1<<20)
	}
	go func() {
		defer close(t.fin)
		for b := range t.ch {
			t.h.Write(b)
			t.free <- b[:0]
		}
	}()
	return t
}

func (t *hashTee) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.mu.Lock()
		if !t.closed {
			b := <-t.free
			t.ch <- append(b, p[:n]...)
		}
		t.mu.Unlock()
	}
	return n, err
}

// stop ends the hashing goroutine once every read so far is hashed; what
// is read after it is not hashed.
func (t *hashTee) stop() {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		close(t.ch)
	}
	t.mu.Unlock()
	<-t.fin
}

// sum is the hash of everything read, after stop.
func (t *hashTee) sum() string {
	t.stop()
	return hex.EncodeToString(t.h.Sum(nil))
}

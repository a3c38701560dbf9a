package fetch

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// TestReadAhead: the bytes arrive whole and in order, the source's error
// arrives after its last bytes, and Close stops a reader that was never
// drained (the goroutine is gone when Close returns).
func TestReadAhead(t *testing.T) {
	data := bytes.Repeat([]byte("kiln read-ahead "), (3*aheadChunk+1000)/16)
	ra := newReadAhead(iotest.HalfReader(bytes.NewReader(data)))
	got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(ra, 100)))
	if err != nil || !bytes.Equal(got, data[:100]) {
		t.Fatalf("first bytes: %v", err)
	}
	rest, err := io.ReadAll(ra)
	if err != nil || !bytes.Equal(append(got, rest...), data) {
		t.Fatalf("all bytes: %d of %d, %v", len(got)+len(rest), len(data), err)
	}
	ra.Close()

	boom := errors.New("boom")
	ra = newReadAhead(io.MultiReader(bytes.NewReader(data[:5000]), iotest.ErrReader(boom)))
	got, err = io.ReadAll(ra)
	if !errors.Is(err, boom) || !bytes.Equal(got, data[:5000]) {
		t.Fatalf("error: %d bytes, %v", len(got), err)
	}
	ra.Close()

	// A decompressor's io.ErrUnexpectedEOF (its stream cut short) is an
	// error, not the end.
	ra = newReadAhead(io.MultiReader(bytes.NewReader(data[:5000]), iotest.ErrReader(io.ErrUnexpectedEOF)))
	if got, err = io.ReadAll(ra); err != io.ErrUnexpectedEOF || len(got) != 5000 {
		t.Fatalf("cut short: %d bytes, %v", len(got), err)
	}
	ra.Close()

	ra = newReadAhead(bytes.NewReader(bytes.Repeat(data, 8)))
	ra.Read(make([]byte, 10))
	ra.Close()
	select {
	case <-ra.done:
	default:
		t.Fatal("the read-ahead goroutine still runs after Close")
	}
}

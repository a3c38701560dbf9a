package devhelper

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"unsafe"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// BlockSum is what Delta compares blocks by: CRC-32C and CRC-32 (IEEE) of b
// side by side. Both run in hardware on amd64 and arm64, so comparing costs
// next to nothing beside reading. A sum is not a proof: a block whose sum
// matches by accident is caught by the SHA-256 of the whole range.
func BlockSum(b []byte) uint64 {
	return uint64(crc32.Checksum(b, castagnoli))<<32 | uint64(crc32.ChecksumIEEE(b))
}

// Delta writes a new version of [0, n) of dev and proves it in one read pass.
//
// stdin: the new content's BlockSum for every bs-byte block (8 bytes each,
// big-endian), then the new bytes of each block Delta reports, in the order
// it reports them.
//
// stdout: "d I\n" for each block I whose sum differs, as soon as the read
// finds it; "p OFF\n" every 16 MiB read (progress); at the end "= K SHA\n": K blocks written, and SHA the SHA-256 of
// [0, n) — blocks that matched as read from the medium, written blocks as
// written, each then read back from the medium after fsync and compared.
// So SHA is the hash of what the device holds, as a second full read would
// give, without the second read.
func Delta(dev string, n, bs int64, stdin io.Reader, stdout io.Writer) error {
	nb := (n + bs - 1) / bs
	raw := make([]byte, nb*8)
	if _, err := io.ReadFull(stdin, raw); err != nil {
		return fmt.Errorf("delta: block sums: %w", err)
	}
	want := make([]uint64, nb)
	for i := range want {
		want[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	rf, err := openDirect(dev)
	if err != nil {
		return err
	}
	defer rf.Close()
	wf, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer wf.Close()

	// The reader runs ahead, reporting differing blocks so the host can send
	// them while the writer below is still behind.
	type chunk struct {
		off  int64
		data []byte
		diff []int64 // block indexes that differ
	}
	const chunkSize = 1 << 20
	per := chunkSize - chunkSize%bs
	if per == 0 {
		per = bs
	}
	free := make(chan []byte, 8)
	for range cap(free) {
		free <- aligned(int(per))
	}
	chunks := make(chan chunk, cap(free))
	stop := make(chan struct{})
	defer close(stop)
	rerr := make(chan error, 1)
	go func() {
		defer close(chunks)
		out := bufio.NewWriter(stdout)
		for off := int64(0); off < n; off += per {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			k := min(per, n-off)
			if got, err := rf.ReadAt(buf[:k], off); int64(got) < k {
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				rerr <- fmt.Errorf("delta: read %s at %d: %w", dev, off, err)
				return
			}
			c := chunk{off: off, data: buf[:k]}
			for b := int64(0); b < k; b += bs {
				i := (off + b) / bs
				if BlockSum(buf[b:min(b+bs, k)]) != want[i] {
					c.diff = append(c.diff, i)
					fmt.Fprintf(out, "d %d\n", i)
				}
			}
			const every = 16 << 20
			if done := off + k; done/every != off/every {
				fmt.Fprintf(out, "p %d\n", done)
			}
			if out.Buffered() > 0 {
				if err := out.Flush(); err != nil {
					rerr <- err
					return
				}
			}
			select {
			case chunks <- c:
			case <-stop:
				return
			}
		}
		rerr <- out.Flush()
	}()

	h := sha256.New()
	type written struct {
		i   int64
		sum [32]byte
	}
	var wrote []written
	in := bufio.NewReaderSize(stdin, 1<<20)
	nbuf := make([]byte, bs)
	for c := range chunks {
		pos := c.off
		for _, i := range c.diff {
			at := i * bs
			h.Write(c.data[pos-c.off : at-c.off])
			nb := nbuf[:min(bs, n-at)]
			if _, err := io.ReadFull(in, nb); err != nil {
				return fmt.Errorf("delta: block %d from the host: %w", i, err)
			}
			if BlockSum(nb) != want[i] {
				return fmt.Errorf("delta: block %d from the host does not match its sum", i)
			}
			if _, err := wf.WriteAt(nb, at); err != nil {
				return fmt.Errorf("delta: write %s at %d: %w", dev, at, err)
			}
			h.Write(nb)
			wrote = append(wrote, written{i, sha256.Sum256(nb)})
			pos = at + int64(len(nb))
		}
		h.Write(c.data[pos-c.off:])
		free <- c.data[:cap(c.data)]
	}
	if err := <-rerr; err != nil {
		return err
	}
	if err := wf.Sync(); err != nil {
		return fmt.Errorf("delta: fsync %s: %w", dev, err)
	}
	back := aligned(int(bs))
	for _, w := range wrote {
		at := w.i * bs
		b := back[:min(bs, n-at)]
		if got, err := rf.ReadAt(b, at); got < len(b) {
			return fmt.Errorf("delta: read back %s at %d: %v", dev, at, err)
		}
		if sha256.Sum256(b) != w.sum {
			return fmt.Errorf("delta: block %d of %s reads back different from what was written", w.i, dev)
		}
	}
	_, err = fmt.Fprintf(stdout, "= %d %s\n", len(wrote), hex.EncodeToString(h.Sum(nil)))
	return err
}

// aligned returns n bytes starting on a 4 KiB boundary, as O_DIRECT needs.
func aligned(n int) []byte {
	raw := make([]byte, n+4096)
	a := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))&4095)) % 4096
	return raw[a : a+n : a+n]
}

package sshdev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"time"

	"kiln.dev/kiln/flash/sshdev/devhelper"
)

// writeVerified writes n bytes from r to dev (only changed blocks when the
// device can hash them) and returns the device's hash of the range, which
// must equal the image's.
func writeVerified(ctx context.Context, d *device, dev string, r io.ReaderAt, n int64, phase string, opts UpdateOptions) (string, error) {
	progress := func(done int64) { opts.Progress.Report(phase, done, n) }
	helperDelta := !opts.NoDelta && d.helper != ""
	stockDelta := !opts.NoDelta && d.helper == ""
	// Stock tools hash a block per dd | sha256sum pair of processes (about
	// 4 ms each here): at 4 KiB blocks that is minutes for a 256 MiB slot,
	// longer than sending it whole. At 1 MiB it is 256 pairs.
	bs := opts.BlockSize
	switch {
	case bs != 0:
	case stockDelta:
		bs = 1 << 20
	default:
		bs = 4 << 10
	}
	var sums []uint64
	if helperDelta {
		// The helper needs the new block sums before it starts reading;
		// they take a fraction of the time SHA-256 does.
		var err error
		if sums, err = blockSums(r, n, bs); err != nil {
			return "", err
		}
	}
	// The image's hash (and, for stock tools, its block hashes) is computed
	// while the device works.
	lc := make(chan localHashes, 1)
	go func() { lc <- hashLocal(r, n, bs, stockDelta) }()
	local := sync.OnceValue(func() localHashes { return <-lc })

	var got string
	var err error
	switch {
	case helperDelta:
		var k int
		if got, k, err = d.deltaWrite(ctx, dev, r, n, bs, sums, progress); err == nil {
			opts.Log.Printf("%s: %d of %d blocks differ", dev, k, len(sums))
		}
	case stockDelta:
		var dsums [][32]byte
		if dsums, err = d.blockHashes(ctx, dev, 0, n, bs); err != nil {
			break
		}
		if l := local(); l.err != nil {
			err = l.err
		} else if err = d.writeChanged(ctx, dev, r, n, bs, dsums, l.blocks, opts.Log); err == nil {
			got, err = d.hash(ctx, dev, 0, n)
		}
	default:
		if err = d.write(ctx, dev, 0, &progressReader{r: io.NewSectionReader(r, 0, n), fn: progress}); err == nil {
			got, err = d.hash(ctx, dev, 0, n)
		}
	}
	l := local()
	if err != nil {
		return "", err
	}
	if l.err != nil {
		return "", l.err
	}
	if got != l.sum {
		return got, fmt.Errorf("%s: device sha256 %s, image %s: %w", dev, got, l.sum, errVerify)
	}
	progress(n)
	return got, nil
}

// progressReader reports how much has been read from r.
type progressReader struct {
	r    io.Reader
	n    int64
	fn   func(int64)
	last time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	k, err := p.r.Read(b)
	p.n += int64(k)
	if now := time.Now(); now.Sub(p.last) > 100*time.Millisecond || err != nil {
		p.fn(p.n)
		p.last = now
	}
	return k, err
}

// localHashes is the image side of a write: the range's SHA-256 and, for
// stock-tools deltas, the SHA-256 of every block.
type localHashes struct {
	sum    string
	blocks [][32]byte
	err    error
}

// hashLocal reads r's n bytes once for the whole hash and, if blocks is
// set, the hash of every bs-byte block.
func hashLocal(r io.ReaderAt, n, bs int64, blocks bool) localHashes {
	var l localHashes
	h := sha256.New()
	l.err = eachChunk(r, n, bs, func(b []byte) {
		h.Write(b)
		for o := int64(0); blocks && o < int64(len(b)); o += bs {
			l.blocks = append(l.blocks, sha256.Sum256(b[o:min(o+bs, int64(len(b)))]))
		}
	})
	l.sum = hex.EncodeToString(h.Sum(nil))
	return l
}

// blockSums returns devhelper.BlockSum of every bs-byte block of r's n bytes.
func blockSums(r io.ReaderAt, n, bs int64) ([]uint64, error) {
	sums := make([]uint64, 0, (n+bs-1)/bs)
	err := eachChunk(r, n, bs, func(b []byte) {
		for o := int64(0); o < int64(len(b)); o += bs {
			sums = append(sums, devhelper.BlockSum(b[o:min(o+bs, int64(len(b)))]))
		}
	})
	return sums, err
}

// eachChunk hands r's n bytes to fn in pieces of about 1 MiB that start on
// bs boundaries.
func eachChunk(r io.ReaderAt, n, bs int64, fn func([]byte)) error {
	buf := make([]byte, max(bs, 1<<20-(1<<20)%bs))
	for off := int64(0); off < n; {
		k := min(int64(len(buf)), n-off)
		if _, err := r.ReadAt(buf[:k], off); err != nil {
			return err
		}
		fn(buf[:k])
		off += k
	}
	return nil
}

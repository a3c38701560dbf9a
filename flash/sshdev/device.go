package sshdev

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ssh"
)

// device runs the device-side half of kiln's SSH work with stock tools, or
// with the uploaded helper when one fits the device. It counts the bytes it
// sends.
type device struct {
	r      ssh.Runner
	helper string // verified helper path on the device, "" for stock tools
	hsum   string // its sha256
	dir    string // the private directory kiln made for it
	// sent counts the bytes sent. SSH's stdin copy may still be running
	// when Run returns, so it is atomic.
	sent atomic.Int64
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (d *device) run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	if stdin != nil {
		stdin = countingReader{stdin, &d.sent}
	}
	return d.r.Run(ctx, cmd, stdin, stdout)
}

// maxOutput bounds what kiln keeps of a command's answer: a device that
// answers a question with gigabytes is refused, not buffered.
const maxOutput = 1 << 20

func (d *device) output(ctx context.Context, cmd string) (string, error) {
	var out bytes.Buffer
	err := d.run(ctx, cmd, nil, &limitWriter{w: &out, n: maxOutput})
	return out.String(), err
}

// ErrTooMuch means a device answered with more bytes than the question allows.
var errTooMuch = errors.New("the device answered with more bytes than asked for")

// limitWriter passes on up to n bytes and fails after.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errTooMuch
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// quote makes s one shell word.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// readAt reads n bytes at off from dev, past the page cache (O_DIRECT, so
// the range is widened to whole sectors).
func (d *device) readAt(ctx context.Context, dev string, off, n int64) ([]byte, error) {
	lo, hi := off&^511, (off+n+511)&^511
	var out bytes.Buffer
	cmd := fmt.Sprintf("dd if=%s bs=65536 iflag=direct,skip_bytes,count_bytes skip=%d count=%d status=none", quote(dev), lo, hi-lo)
	if err := d.run(ctx, cmd, nil, &limitWriter{w: &out, n: hi - lo}); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", dev, off, err)
	}
	b := out.Bytes()
	if int64(len(b)) < off-lo+n {
		return nil, fmt.Errorf("read %s at %d: short read (%d of %d bytes)", dev, off, len(b), hi-lo)
	}
	return b[off-lo : off-lo+n], nil
}

// hash returns the device's SHA-256 of n bytes of dev at off, read past the page cache.
func (d *device) hash(ctx context.Context, dev string, off, n int64) (string, error) {
	if off%512 != 0 || n%512 != 0 {
		return "", fmt.Errorf("hash %s: range %d+%d is not whole sectors", dev, off, n)
	}
	cmd := fmt.Sprintf("dd if=%s bs=1048576 iflag=direct,skip_bytes,count_bytes skip=%d count=%d status=none | sha256sum", quote(dev), off, n)
	if d.helper != "" {
		cmd = d.helperCmd("sha256", dev, fmt.Sprint(off), fmt.Sprint(n))
	}
	out, err := d.output(ctx, cmd)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", dev, err)
	}
	f := strings.Fields(out)
	if len(f) == 0 || len(f[0]) != 64 {
		return "", fmt.Errorf("hash %s: unexpected sha256sum output %q", dev, out)
	}
	return f[0], nil
}

// write writes r to dev at off and flushes it to the medium.
func (d *device) write(ctx context.Context, dev string, off int64, r io.Reader) error {
	cmd := fmt.Sprintf("dd of=%s bs=1048576 iflag=fullblock oflag=seek_bytes seek=%d conv=notrunc,fsync status=none", quote(dev), off)
	if err := d.run(ctx, cmd, r, nil); err != nil {
		return fmt.Errorf("write %s at %d: %w", dev, off, err)
	}
	return nil
}

// block is one run of bytes to write at an offset of a device.
type block struct {
	Off  int64
	Data []byte
}

// writeBlocks writes scattered blocks in one session.
func (d *device) writeBlocks(ctx context.Context, dev string, blocks []block) error {
	if len(blocks) == 0 {
		return nil
	}
	var stdin bytes.Buffer
	if d.helper != "" {
		for _, b := range blocks {
			fmt.Fprintf(&stdin, "%d %d\n", b.Off, len(b.Data))
			stdin.Write(b.Data)
		}
		return d.run(ctx, d.helperCmd("apply", dev), &stdin, nil)
	}
	// Stock tools: one dd per run, each reading exactly its bytes from stdin.
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, b := range blocks {
		fmt.Fprintf(&script, "dd of=%s bs=%d count=1 iflag=fullblock oflag=seek_bytes seek=%d conv=notrunc status=none\n", quote(dev), len(b.Data), b.Off)
		stdin.Write(b.Data)
	}
	script.WriteString("sync\n")
	return d.run(ctx, "sh -c "+quote(script.String()), &stdin, nil)
}

// writeChanged writes the blocks of r whose hashes (local) differ from the
// device's (remote), in sessions of up to 1024 blocks.
func (d *device) writeChanged(ctx context.Context, dev string, r io.ReaderAt, n, bs int64, remote, local [][32]byte, log flash.Note) error {
	if len(remote) != len(local) {
		return fmt.Errorf("%s: %d block hashes from the device, %d local", dev, len(remote), len(local))
	}
	// Runs of differing blocks are written as one: a dd each with stock tools.
	type run struct{ off, n int64 }
	var runs []run
	differ := 0
	for i, s := range remote {
		if s == local[i] {
			continue
		}
		differ++
		off := int64(i) * bs
		k := min(bs, n-off)
		if j := len(runs) - 1; j >= 0 && runs[j].off+runs[j].n == off && runs[j].n+k <= 64<<20 {
			runs[j].n += k
			continue
		}
		runs = append(runs, run{off, k})
	}
	log.Printf("%s: %d of %d blocks differ (%d runs)", dev, differ, len(remote), len(runs))
	// Sessions of up to 1024 runs or 64 MiB, read from the image as they go.
	for len(runs) > 0 {
		var batch []block
		size := int64(0)
		for len(runs) > 0 && len(batch) < 1024 && (size == 0 || size+runs[0].n <= 64<<20) {
			data := make([]byte, runs[0].n)
			if _, err := r.ReadAt(data, runs[0].off); err != nil {
				return err
			}
			batch = append(batch, block{Off: runs[0].off, Data: data})
			size += runs[0].n
			runs = runs[1:]
		}
		if err := d.writeBlocks(ctx, dev, batch); err != nil {
			return err
		}
	}
	return nil
}

// blockHashes returns the SHA-256 of every bs-byte block of dev in [off, off+n).
func (d *device) blockHashes(ctx context.Context, dev string, off, n, bs int64) ([][32]byte, error) {
	var out bytes.Buffer
	var cmd string
	if d.helper != "" {
		cmd = d.helperCmd("blockhash", dev, fmt.Sprint(off), fmt.Sprint(n), fmt.Sprint(bs))
	} else {
		cmd = fmt.Sprintf(`i=0; while [ $i -lt %d ]; do dd if=%s bs=%d skip=$((%d+i)) count=1 iflag=direct status=none | sha256sum; i=$((i+1)); done`,
			(n+bs-1)/bs, quote(dev), bs, off/bs)
		if off%bs != 0 {
			return nil, fmt.Errorf("block hashes: offset %d is not a multiple of %d", off, bs)
		}
	}
	if err := d.run(ctx, cmd, nil, &limitWriter{w: &out, n: ((n+bs-1)/bs + 1) * 100}); err != nil {
		return nil, fmt.Errorf("block hashes of %s: %w", dev, err)
	}
	var sums [][32]byte
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var s [32]byte
		if len(f) == 0 || hex.DecodedLen(len(f[0])) != 32 {
			return nil, fmt.Errorf("block hashes of %s: bad line %q", dev, sc.Text())
		}
		hex.Decode(s[:], []byte(f[0]))
		sums = append(sums, s)
	}
	if want := (n + bs - 1) / bs; int64(len(sums)) != want {
		return nil, fmt.Errorf("block hashes of %s: got %d, want %d", dev, len(sums), want)
	}
	return sums, nil
}

// lockDir is the device-side lock an update holds from its first write until
// the trial reboot (/run is a tmpfs: a reboot releases it).
const lockDir = "/run/kiln-update.lock"

// lock takes the device's update lock for owner, or returns ErrBusy naming
// the holder.
func (d *device) lock(ctx context.Context, owner string) error {
	cmd := fmt.Sprintf("if mkdir %[1]s 2>/dev/null; then echo %[2]s > %[1]s/owner; else cat %[1]s/owner 2>/dev/null; exit 75; fi", lockDir, quote(owner))
	out, err := d.output(ctx, cmd)
	if err != nil {
		var ee *ssh.ExitError
		if holder := strings.TrimSpace(out); holder != "" || errors.As(err, &ee) && ee.Status == 75 {
			return fmt.Errorf("%w: %s is held by %q (remove it if that update is gone)", ErrBusy, lockDir, holder)
		}
		return fmt.Errorf("update lock: %w", err)
	}
	return nil
}

// unlock releases the lock if owner holds it.
func (d *device) unlock(ctx context.Context, owner string) {
	d.output(ctx, fmt.Sprintf("[ \"$(cat %[1]s/owner 2>/dev/null)\" = %[2]s ] && rm -rf %[1]s", lockDir, quote(owner)))
}

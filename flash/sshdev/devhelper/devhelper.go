// Package devhelper is the device side of kiln's SSH delta updates: a small
// static program, uploaded and checked by hash, that hashes and patches blocks.
package devhelper

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
)

// Main is the device-side helper (cmd/kiln-helper), a static program
// kiln uploads to devices of its own architecture:
//
//	kiln-helper blockhash DEV OFF LEN BS   one hex SHA-256 per BS-byte block
//	kiln-helper sha256 DEV OFF LEN          the SHA-256 of the range, as sha256sum prints it
//	kiln-helper apply DEV                   stdin: "OFF LEN\n" + LEN bytes, repeated; then fsync
//	kiln-helper delta DEV LEN BS            one-pass delta write with proof (see Delta)
//
// Reads bypass the page cache (O_DIRECT) so hashes are of what the medium holds.
func Main(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: kiln-helper blockhash DEV OFF LEN BS | sha256 DEV OFF LEN | apply DEV | delta DEV LEN BS")
	}
	switch args[0] {
	case "blockhash":
		if len(args) != 5 {
			return fmt.Errorf("usage: kiln-helper blockhash DEV OFF LEN BS")
		}
		var n [3]int64
		for i := range n {
			v, err := strconv.ParseInt(args[2+i], 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("blockhash: bad number %q", args[2+i])
			}
			n[i] = v
		}
		return blockHash(stdout, args[1], n[0], n[1], n[2])
	case "sha256":
		if len(args) != 4 {
			return fmt.Errorf("usage: kiln-helper sha256 DEV OFF LEN")
		}
		off, err1 := strconv.ParseInt(args[2], 10, 64)
		n, err2 := strconv.ParseInt(args[3], 10, 64)
		if err1 != nil || err2 != nil || off < 0 || n < 0 {
			return fmt.Errorf("sha256: bad range %s+%s", args[2], args[3])
		}
		h := sha256.New()
		if err := readRange(args[1], off, n, func(b []byte) { h.Write(b) }); err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), args[1])
		return err
	case "apply":
		return apply(stdin, args[1])
	case "delta":
		if len(args) != 4 {
			return fmt.Errorf("usage: kiln-helper delta DEV LEN BS")
		}
		n, err1 := strconv.ParseInt(args[2], 10, 64)
		bs, err2 := strconv.ParseInt(args[3], 10, 64)
		if err1 != nil || err2 != nil || n <= 0 || bs <= 0 || bs%512 != 0 || n%512 != 0 {
			return fmt.Errorf("delta: bad length %s or block size %s (both whole sectors)", args[2], args[3])
		}
		return Delta(args[1], n, bs, stdin, stdout)
	}
	return fmt.Errorf("kiln-helper: unknown command %q", args[0])
}

func blockHash(w io.Writer, dev string, off, n, bs int64) error {
	if bs <= 0 || bs%512 != 0 {
		return fmt.Errorf("blockhash: block size %d is not a multiple of 512", bs)
	}
	bw := bufio.NewWriter(w)
	var pending []byte
	emit := func(b []byte) {
		sum := sha256.Sum256(b)
		fmt.Fprintln(bw, hex.EncodeToString(sum[:]))
	}
	err := readRange(dev, off, n, func(b []byte) {
		for len(b) > 0 {
			k := min(int(bs)-len(pending), len(b))
			pending = append(pending, b[:k]...)
			b = b[k:]
			if len(pending) == int(bs) {
				emit(pending)
				pending = pending[:0]
			}
		}
	})
	if err != nil {
		return err
	}
	if len(pending) > 0 {
		emit(pending)
	}
	return bw.Flush()
}

// readRange reads [off, off+n) of dev in 1 MiB O_DIRECT reads (the page
// cache may hold what was written but not what the medium holds) and hands
// each piece to fn in order.
func readRange(dev string, off, n int64, fn func([]byte)) error {
	const chunk = 1 << 20
	if off%512 != 0 {
		return fmt.Errorf("read %s: offset %d is not sector-aligned", dev, off)
	}
	f, err := openDirect(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := aligned(chunk)
	for pos := int64(0); pos < n; {
		want := min(int64(chunk), n-pos)
		k := (want + 511) &^ 511
		got, err := f.ReadAt(buf[:k], off+pos)
		if int64(got) < want {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read %s at %d: %w", dev, off+pos, err)
		}
		fn(buf[:want])
		pos += want
	}
	return nil
}

// openDirect opens dev for reading past the page cache (O_DIRECT), or
// plainly where the file system does not do O_DIRECT (a block device does).
func openDirect(dev string) (*os.File, error) {
	if f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0); err == nil {
		return f, nil
	}
	return os.Open(dev)
}

func apply(r io.Reader, dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		var off, n int64
		if _, err := fmt.Fscanf(br, "%d %d\n", &off, &n); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("apply: header: %w", err)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("apply: block at %d: %w", off, err)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("apply: write %s at %d: %w", dev, off, err)
		}
	}
	return f.Sync()
}

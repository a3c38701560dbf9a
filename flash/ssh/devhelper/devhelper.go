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
)

// Main is the device-side helper (cmd/kiln-helper), a static program
// kiln uploads to devices of its own architecture:
//
//	kiln-helper blockhash DEV OFF LEN BS   one hex SHA-256 per BS-byte block
//	kiln-helper apply DEV                   stdin: "OFF LEN\n" + LEN bytes, repeated; then fsync
func Main(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: kiln-helper blockhash DEV OFF LEN BS | apply DEV")
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
	case "apply":
		return apply(stdin, args[1])
	}
	return fmt.Errorf("kiln-helper: unknown command %q", args[0])
}

func blockHash(w io.Writer, dev string, off, n, bs int64) error {
	if bs <= 0 {
		return fmt.Errorf("blockhash: block size %d", bs)
	}
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriter(w)
	buf := make([]byte, bs)
	for pos := int64(0); pos < n; pos += bs {
		k := min(bs, n-pos)
		if _, err := f.ReadAt(buf[:k], off+pos); err != nil {
			return fmt.Errorf("blockhash: read %s at %d: %w", dev, off+pos, err)
		}
		sum := sha256.Sum256(buf[:k])
		fmt.Fprintln(bw, hex.EncodeToString(sum[:]))
	}
	return bw.Flush()
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

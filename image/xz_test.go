package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestXZRoundTripWithXZUtils(t *testing.T) {
	t.Parallel()
	need(t, "xz")
	data := append(benchPayload(300<<10), make([]byte, 200<<10)...) // text, then zero blocks
	var comp bytes.Buffer
	if err := CompressXZ(context.Background(), &comp, bytes.NewReader(data), XZOptions{BlockSize: 64 << 10, Workers: 3}); err != nil {
		t.Fatal(err)
	}
	// Same bytes whatever the worker count.
	var comp1 bytes.Buffer
	CompressXZ(context.Background(), &comp1, bytes.NewReader(data), XZOptions{BlockSize: 64 << 10, Workers: 1})
	if !bytes.Equal(comp.Bytes(), comp1.Bytes()) {
		t.Error("output depends on the worker count")
	}
	// xz-utils sees one stream of 8 blocks, each with its sizes in the header.
	f := filepath.Join(t.TempDir(), "x.xz")
	os.WriteFile(f, comp.Bytes(), 0o644)
	out, err := exec.Command("xz", "--robot", "-lvv", f).CombinedOutput()
	if err != nil {
		t.Fatalf("xz -l: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("\nfile\t1\t8\t")) || bytes.Count(out, []byte("\tcu\t")) != 8 {
		t.Errorf("xz -lvv --robot:\n%s", out)
	}
	cmd := exec.Command("xz", "-dc")
	cmd.Stdin = bytes.NewReader(comp.Bytes())
	dec, err := cmd.Output()
	if err != nil || !bytes.Equal(dec, data) {
		t.Fatalf("xz -dc: %v, %d bytes, equal=%v", err, len(dec), bytes.Equal(dec, data))
	}
	// kiln's reader: its own output (parallel), xz -T0 output (has sizes:
	// parallel), plain xz output (no sizes: sequential), an empty stream.
	for name, in := range map[string][]byte{
		"kiln":      comp.Bytes(),
		"xz -T2":    xzUtils(t, data, "-T2", "--block-size=65536"),
		"xz single": xzUtils(t, data, "-T1"),
	} {
		r := NewXZReader(bytes.NewReader(in), 2)
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: read %d bytes, err %v", name, len(got), err)
		}
	}
	var empty bytes.Buffer
	CompressXZ(context.Background(), &empty, bytes.NewReader(nil), XZOptions{})
	if got, err := io.ReadAll(NewXZReader(bytes.NewReader(empty.Bytes()), 1)); err != nil || len(got) != 0 {
		t.Errorf("empty: %d bytes, %v", len(got), err)
	}
	cmd = exec.Command("xz", "-t")
	cmd.Stdin = bytes.NewReader(empty.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("xz -t of an empty kiln stream: %v %s", err, out)
	}
}

func xzUtils(t *testing.T, data []byte, args ...string) []byte {
	cmd := exec.Command("xz", append([]string{"-c", "-0"}, args...)...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestXZReaderRejectsCorruption(t *testing.T) {
	t.Parallel()
	data := benchPayload(200 << 10)
	var comp bytes.Buffer
	CompressXZ(context.Background(), &comp, bytes.NewReader(data), XZOptions{BlockSize: 64 << 10})
	for _, off := range []int{5, 40, comp.Len() / 2, comp.Len() - 20, comp.Len() - 2} {
		bad := append([]byte(nil), comp.Bytes()...)
		bad[off] ^= 0x40
		got, err := io.ReadAll(NewXZReader(bytes.NewReader(bad), 2))
		if err == nil {
			t.Errorf("flipped byte %d: no error (%d bytes)", off, len(got))
		}
	}
	trunc := comp.Bytes()[:comp.Len()-30]
	if _, err := io.ReadAll(NewXZReader(bytes.NewReader(trunc), 2)); !errors.Is(err, ErrXZ) {
		t.Errorf("truncated: err = %v, want ErrXZ", err)
	}
}

// A block header claiming a huge size is refused before anything that size
// is allocated.
func TestXZReaderRefusesHugeBlocks(t *testing.T) {
	t.Parallel()
	hdr := []byte{0, 0xc0} // block header: compressed and uncompressed sizes, one filter
	hdr = binary.AppendUvarint(hdr, 1<<40)
	hdr = binary.AppendUvarint(hdr, 1<<40)
	hdr = append(hdr, 0x21, 1, 16) // LZMA2, dictionary flag
	for (len(hdr)+4)%4 != 0 {
		hdr = append(hdr, 0)
	}
	hdr[0] = byte((len(hdr)+4)/4 - 1)
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.ChecksumIEEE(hdr))
	stream := append(xzStreamHeader(), hdr...)
	_, err := io.ReadAll(NewXZReader(bytes.NewReader(stream), 1))
	if !errors.Is(err, ErrXZ) || !strings.Contains(err.Error(), "larger than kiln reads") {
		t.Errorf("huge block: %v", err)
	}
}

func FuzzXZReader(f *testing.F) {
	var comp bytes.Buffer
	CompressXZ(context.Background(), &comp, bytes.NewReader(benchPayload(100<<10)), XZOptions{BlockSize: 32 << 10})
	f.Add(comp.Bytes())
	var empty bytes.Buffer
	CompressXZ(context.Background(), &empty, bytes.NewReader(nil), XZOptions{})
	f.Add(empty.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewXZReader(bytes.NewReader(b), 2)
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
		r.Close()
	})
}

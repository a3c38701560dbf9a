package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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

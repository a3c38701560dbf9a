package flash

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func dfuTestImage(t testing.TB) *Image {
	r := rand.New(rand.NewPCG(4, 0x11a))
	a := make([]byte, 3000)
	b := make([]byte, 70001)
	for i := range a {
		a[i] = byte(r.UintN(256))
	}
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	img, err := NewImage("test", Segment{Addr: 0x08000000, Data: a}, Segment{Addr: 0x0800c000, Data: b})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func sameSegments(t *testing.T, got, want *Image) {
	t.Helper()
	if len(got.Segments) != len(want.Segments) {
		t.Fatalf("%d segments, want %d", len(got.Segments), len(want.Segments))
	}
	for i := range got.Segments {
		g, w := got.Segments[i], want.Segments[i]
		if g.Addr != w.Addr || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("segment %d at 0x%x+%d, want 0x%x+%d (or different bytes)", i, g.Addr, len(g.Data), w.Addr, len(w.Data))
		}
	}
}

func TestDfuSeRoundTrip(t *testing.T) {
	img := dfuTestImage(t)
	data := EncodeDfuSe(img, 0x0483, 0xdf11)
	got, err := ParseDfu("x.dfu", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameSegments(t, got, img)
	if got.SHA256() != img.SHA256() {
		t.Fatal("hash differs")
	}
	s, err := ParseDfuSuffix(data)
	if err != nil || s.Vendor != 0x0483 || s.Product != 0xdf11 || s.DFUVersion != 0x011a || s.Length != 16 {
		t.Fatalf("suffix %+v %v", s, err)
	}
}

func needTool(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is missing: the Makefile installs dfu-util (make deps)", name)
	}
	return p
}

// TestDfuSeAcceptedByDfuUtil: Debian's dfu-suffix checks kiln's suffix and
// CRC, and dfuse-pack (shipped with dfu-util) unpacks the same elements.
func TestDfuSeAcceptedByDfuUtil(t *testing.T) {
	needTool(t, "dfu-suffix")
	img := dfuTestImage(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "fw.dfu")
	if err := os.WriteFile(f, EncodeDfuSe(img, 0x0483, 0xdf11), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dfu-suffix", "-c", f).CombinedOutput()
	if err != nil {
		t.Fatalf("dfu-suffix -c: %v\n%s", err, out)
	}
	for _, want := range []string{"Product ID:\t0xDF11", "Vendor ID:\t0x0483", "BCD DFU:\t0x011A", "Length:\t\t16"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dfu-suffix -c does not say %q:\n%s", want, out)
		}
	}
	needTool(t, "dfuse-pack")
	cmd := exec.Command("dfuse-pack", "-d", f)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dfuse-pack -d: %v\n%s", err, out)
	}
	for i, s := range img.Segments {
		got, err := os.ReadFile(filepath.Join(dir, "fw.dfu.target0.image"+string(rune('0'+i))+".bin"))
		if err != nil || !bytes.Equal(got, s.Data) {
			t.Errorf("dfuse-pack dumped element %d differently (%v)", i, err)
		}
	}
	// A damaged file fails dfu-suffix's check as it fails kiln's.
	data, _ := os.ReadFile(f)
	data[100] ^= 0x40
	os.WriteFile(f, data, 0o644)
	if err := exec.Command("dfu-suffix", "-c", f).Run(); err == nil {
		t.Error("dfu-suffix -c accepted a damaged file")
	}
	if _, err := Load(f, LoadOptions{}); !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "CRC") {
		t.Errorf("damaged .dfu: %v, want a CRC error", err)
	}
}

// TestDfuFromDfuUtilTools parses files made by dfuse-pack, dfu-suffix -a
// and dfu-prefix -s.
func TestDfuFromDfuUtilTools(t *testing.T) {
	needTool(t, "dfuse-pack")
	img := dfuTestImage(t)
	dir := t.TempDir()
	var args []string
	for i, s := range img.Segments {
		p := filepath.Join(dir, "s"+string(rune('0'+i))+".bin")
		os.WriteFile(p, s.Data, 0o644)
		args = append(args, "-b", "0x"+strings.ToLower(strings.TrimLeft(hex32(s.Addr), "0"))+":"+p)
	}
	packed := filepath.Join(dir, "packed.dfu")
	args = append(args, "-D", "0x0483:0xdf11", packed)
	if out, err := exec.Command("dfuse-pack", args...).CombinedOutput(); err != nil {
		t.Fatalf("dfuse-pack %v: %v\n%s", args, err, out)
	}
	got, err := Load(packed, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameSegments(t, got, img)

	// dfu-suffix -a on a raw binary: a DFU 1.0 file with no address.
	raw := filepath.Join(dir, "raw.dfu")
	os.WriteFile(raw, img.Segments[1].Data, 0o644)
	if out, err := exec.Command("dfu-suffix", "-v", "0483", "-p", "df11", "-a", raw).CombinedOutput(); err != nil {
		t.Fatalf("dfu-suffix -a: %v\n%s", err, out)
	}
	if _, err := Load(raw, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "--address") {
		t.Errorf("plain DFU file without --address: %v", err)
	}
	addr := uint32(0x0800c000)
	got, err = Load(raw, LoadOptions{Address: &addr})
	if err != nil {
		t.Fatal(err)
	}
	sameSegments(t, got, &Image{Segments: img.Segments[1:]})

	// dfu-prefix -s: a TI Stellaris prefix carries the address (in KiB).
	pre := filepath.Join(dir, "stellaris.dfu")
	os.WriteFile(pre, img.Segments[0].Data, 0o644)
	if out, err := exec.Command("dfu-prefix", "-s", "0x4000", "-a", pre).CombinedOutput(); err != nil {
		t.Fatalf("dfu-prefix: %v\n%s", err, out)
	}
	if out, err := exec.Command("dfu-suffix", "-a", pre).CombinedOutput(); err != nil {
		t.Fatalf("dfu-suffix: %v\n%s", err, out)
	}
	got, err = Load(pre, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameSegments(t, got, &Image{Segments: []Segment{{Addr: 0x4000, Data: img.Segments[0].Data}}})
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return string(b)
}

// TestDfuBad: damaged files are refused with a clear error.
func TestDfuBad(t *testing.T) {
	good := EncodeDfuSe(dfuTestImage(t), 0x0483, 0xdf11)
	resuffix := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		crc := dfuCRC(b[:len(b)-4])
		b[len(b)-4], b[len(b)-3], b[len(b)-2], b[len(b)-1] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
		return b
	}
	// truncated: cut bytes out of the last element, fix the sizes the
	// prefix and target declare, keep a valid suffix: only the element's
	// own size is wrong.
	cut := 100
	trunc := append(append([]byte(nil), good[:len(good)-16-cut]...), good[len(good)-16:]...)
	put32 := func(b []byte, off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put32(trunc, 6, uint32(len(trunc)))
	put32(trunc, 11+266, uint32(len(trunc)-16-11-274))
	trunc = resuffix(trunc)

	flipped := append([]byte(nil), good...)
	flipped[500] ^= 1
	noPrefix := resuffix(append(bytes.Repeat([]byte{0xaa}, 64), good[len(good)-16:]...))
	badTarget := append([]byte(nil), good...)
	copy(badTarget[11:], "Tarxet")
	badTarget = resuffix(badTarget)

	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"bad CRC", flipped, "CRC"},
		{"truncated element", trunc, "truncated element"},
		{"no suffix", good[:len(good)-16], "no DFU suffix"},
		{"too short", []byte("UFD"), "too short"},
		{"DfuSe version without prefix", noPrefix, "no DfuSe prefix"},
		{"bad target signature", badTarget, "Target"},
	} {
		_, err := ParseDfu(tc.name, tc.data, nil)
		if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadImage saying %q", tc.name, err, tc.want)
		}
	}
}

func FuzzParseDfu(f *testing.F) {
	f.Add(EncodeDfuSe(dfuTestImage(f), 0x0483, 0xdf11))
	small, _ := NewImage("s", Segment{Addr: 0x08000000, Data: []byte{1, 2, 3}})
	f.Add(EncodeDfuSe(small, 1, 2))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := ParseDfu("fuzz.dfu", data, nil)
		if err != nil {
			return
		}
		// What parses re-encodes to a file that parses to the same image.
		again, err := ParseDfu("again.dfu", EncodeDfuSe(img, 1, 2), nil)
		if err != nil || again.SHA256() != img.SHA256() || len(again.Segments) != len(img.Segments) {
			t.Fatalf("re-encoding changed the image: %v", err)
		}
	})
}

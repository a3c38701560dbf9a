package attest

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/flash"
)

// avrELF compiles a small AVR program with Debian's avr-gcc (make deps
// installs it): .text, .rodata in flash, and initialised .data that is
// loaded after .text but lives in RAM.
func avrELF(t *testing.T) []byte {
	t.Helper()
	gcc, err := exec.LookPath("avr-gcc")
	if err != nil {
		t.Fatalf("avr-gcc is not installed (make deps installs gcc-avr): %v", err)
	}
	dir := t.TempDir()
	src := `volatile unsigned char counter = 42;
unsigned char table[8] = {1, 2, 3, 4, 5, 6, 7, 8};
int main(void) { for (;;) { counter += table[counter & 7]; } }
`
	os.WriteFile(filepath.Join(dir, "p.c"), []byte(src), 0o644)
	out := filepath.Join(dir, "p.elf")
	if b, err := exec.Command(gcc, "-mmcu=atmega328p", "-Os", "-o", out, filepath.Join(dir, "p.c")).CombinedOutput(); err != nil {
		t.Fatalf("avr-gcc: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// patchSection flips the byte at off inside the named section of an ELF.
func patchSection(t *testing.T, data []byte, name string, off uint64) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(name)
	if s == nil || s.Size <= off {
		t.Fatalf("no section %s with %d bytes", name, off+1)
	}
	out := append([]byte(nil), data...)
	out[s.Offset+off] ^= 0xff
	return out
}

func TestCompareELF(t *testing.T) {
	orig := avrELF(t)
	c, err := CompareELF(orig, orig)
	if err != nil || !c.Identical || len(c.Differing()) != 0 {
		t.Fatalf("identical: %+v %v", c, err)
	}
	for _, sec := range []string{".text", ".data"} {
		c, err := CompareELF(orig, patchSection(t, orig, sec, 1))
		if err != nil {
			t.Fatal(err)
		}
		d := c.Differing()
		if c.Identical || len(d) != 1 || d[0].Name != sec || d[0].Bytes != 1 || d[0].First != d[0].Addr+1 {
			t.Fatalf("patched %s: %+v", sec, d)
		}
	}
}

// TestCompareImage compares HEX-like images (no sections) with the rebuild
// and names the section by load address, including .data, whose load
// address is not its RAM address.
func TestCompareImage(t *testing.T) {
	orig := avrELF(t)
	img, err := flash.ParseELF("p.elf", bytes.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	c, err := CompareImage(orig, img)
	if err != nil || !c.Identical {
		t.Fatalf("identical: %+v %v", c, err)
	}
	for _, sec := range []string{".text", ".data"} {
		pimg, err := flash.ParseELF("patched.elf", bytes.NewReader(patchSection(t, orig, sec, 2)))
		if err != nil {
			t.Fatal(err)
		}
		c, err := CompareImage(orig, pimg)
		if err != nil {
			t.Fatal(err)
		}
		d := c.Differing()
		if c.Identical || len(d) != 1 || d[0].Name != sec || d[0].Bytes != 1 || len(c.Outside) != 0 {
			t.Fatalf("patched %s: %+v outside %+v", sec, d, c.Outside)
		}
	}
	// Bytes past the rebuild's end are reported outside every section.
	ext := &flash.Image{Segments: append(append([]flash.Segment(nil), img.Segments...), flash.Segment{Addr: 0x7000, Data: []byte{1, 2, 3}})}
	c, err = CompareImage(orig, ext)
	if err != nil {
		t.Fatal(err)
	}
	if c.Identical || len(c.Outside) != 1 || c.Outside[0] != (Range{Addr: 0x7000, Size: 3}) {
		t.Fatalf("extra bytes: %+v", c.Outside)
	}
}

func TestCompareDisk(t *testing.T) {
	const mib = 1 << 20
	disk := make([]byte, 4*mib)
	for i := range disk {
		disk[i] = byte(i * 31 / 7)
	}
	parts := []DiskPart{{Name: "root", Start: 2 * mib, Size: 3 * mib / 2}, {Name: "boot", Start: mib, Size: mib}}
	c, err := CompareDisk(bytes.NewReader(disk), bytes.NewReader(disk), int64(len(disk)), int64(len(disk)), parts)
	if err != nil || !c.Identical || len(c.Sections) != 4 {
		t.Fatalf("identical: %+v %v", c, err)
	}
	for _, cse := range []struct {
		off  int
		want string
	}{{0x1b8, "partition table"}, {mib + 5, "boot"}, {3 * mib, "root"}, {4*mib - 1, "unpartitioned"}} {
		patched := append([]byte(nil), disk...)
		patched[cse.off] ^= 0x40
		c, err := CompareDisk(bytes.NewReader(disk), bytes.NewReader(patched), int64(len(disk)), int64(len(patched)), parts)
		if err != nil {
			t.Fatal(err)
		}
		d := c.Differing()
		if c.Identical || len(d) != 1 || d[0].Name != cse.want || d[0].Bytes != 1 || d[0].First != uint64(cse.off) {
			t.Fatalf("byte %#x: %+v", cse.off, d)
		}
	}
	short := disk[:3*mib]
	c, err = CompareDisk(bytes.NewReader(disk), bytes.NewReader(short), int64(len(disk)), int64(len(short)), parts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Identical || c.Note == "" {
		t.Fatalf("a cut image: %+v", c)
	}
}

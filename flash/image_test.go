package flash

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
)

const okHex = ":100000000C9434000C9446000C9446000C9446006A\n:00000001FF\n"

func TestParseHex(t *testing.T) {
	img, err := ParseHex("t.hex", strings.NewReader(okHex))
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Segments) != 1 || img.Segments[0].Addr != 0 || img.Size() != 16 {
		t.Fatalf("segments %+v", img.Segments)
	}
	if img.Segments[0].Data[0] != 0x0C || img.Segments[0].Data[3] != 0x00 {
		t.Errorf("data % x", img.Segments[0].Data)
	}
}

func TestParseHexBadChecksumNamesLine(t *testing.T) {
	bad := ":00000001FF\n:100000000C9434000C9446000C9446000C9446006B\n"
	_, err := ParseHex("bad.hex", strings.NewReader(bad))
	if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "bad.hex:2") || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("err = %v", err)
	}
}

func TestSegmentsMergeAndOverlap(t *testing.T) {
	img, err := NewImage("t", Segment{Addr: 3, Data: []byte{3, 4}}, Segment{Addr: 0, Data: []byte{0, 1, 2, 3}}, Segment{Addr: 6, Data: []byte{5}})
	if err == nil {
		t.Fatalf("overlap accepted: %+v", img)
	}
	img, err = NewImage("t", Segment{Addr: 4, Data: []byte{4, 5}}, Segment{Addr: 0, Data: []byte{0, 1, 2, 3}}, Segment{Addr: 10, Data: []byte{9}})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Segments) != 2 || !bytes.Equal(img.Segments[0].Data, []byte{0, 1, 2, 3, 4, 5}) {
		t.Fatalf("%+v", img.Segments)
	}
	addr, flat := img.Flat(0xff)
	if addr != 0 || !bytes.Equal(flat, []byte{0, 1, 2, 3, 4, 5, 0xff, 0xff, 0xff, 0xff, 9}) {
		t.Fatalf("flat %x % x", addr, flat)
	}
}

func TestCheckAgainstBoard(t *testing.T) {
	uno, err := boards.Get("arduino-uno")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		img  *Image
		want string
	}{
		{"empty", &Image{Source: "e"}, "empty"},
		{"bootloader", &Image{Source: "b", Segments: []Segment{{Addr: 0x7d00, Data: make([]byte, 0x200)}}}, "overlaps the bootloader"},
		{"past flash", &Image{Source: "p", Segments: []Segment{{Addr: 0x8000, Data: make([]byte, 2)}}}, "outside"},
		{"arm elf", &Image{Source: "a", Machine: elf.EM_ARM, Segments: []Segment{{Addr: 0, Data: []byte{1}}}}, "ELF for EM_ARM"},
		// A Mega 2560 build (avr6, with binutils' link-relax bit) is not an Uno's.
		{"avr6 elf", &Image{Source: "m", Machine: elf.EM_AVR, Flags: 0x86, Segments: []Segment{{Addr: 0, Data: []byte{1}}}}, "ELF for avr6, but arduino-uno (atmega328p) is avr5"},
		{"avr elf without arch", &Image{Source: "z", Machine: elf.EM_AVR, Segments: []Segment{{Addr: 0, Data: []byte{1}}}}, "ELF for avr0"},
	}
	for _, c := range cases {
		err := c.img.Check(uno)
		if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	good := &Image{Source: "g", Machine: elf.EM_AVR, Flags: 0x85, Segments: []Segment{{Addr: 0, Data: make([]byte, 32256)}}}
	if err := good.Check(uno); err != nil {
		t.Errorf("full application area refused: %v", err)
	}
}

func FuzzParseHex(f *testing.F) {
	f.Add([]byte(okHex))
	f.Add([]byte(":020000040800F2\n:0400000001020304F2\n:00000001FF\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := ParseHex("f.hex", bytes.NewReader(data))
		if err != nil {
			return
		}
		for i := 1; i < len(img.Segments); i++ {
			if uint64(img.Segments[i].Addr) <= img.Segments[i-1].End()-1 {
				t.Fatalf("segments overlap or unsorted: %+v", img.Segments)
			}
		}
	})
}

// tinyELF is a 32-bit little-endian AVR executable with one PT_LOAD
// segment whose header claims filesz and memsz bytes at paddr; data follows
// the headers.
func tinyELF(paddr, filesz, memsz uint32, data []byte) []byte {
	b := make([]byte, 52+32)
	copy(b, "\x7fELF\x01\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], uint16(elf.ET_EXEC))
	le.PutUint16(b[18:], uint16(elf.EM_AVR))
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[28:], 52) // phoff
	le.PutUint16(b[40:], 52) // ehsize
	le.PutUint16(b[42:], 32) // phentsize
	le.PutUint16(b[44:], 1)  // phnum
	ph := b[52:]
	le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
	le.PutUint32(ph[4:], 84) // offset
	le.PutUint32(ph[8:], paddr)
	le.PutUint32(ph[12:], paddr)
	le.PutUint32(ph[16:], filesz)
	le.PutUint32(ph[20:], memsz)
	return append(b, data...)
}

func TestParseELFRefusesHugeSegments(t *testing.T) {
	if img, err := ParseELF("ok.elf", bytes.NewReader(tinyELF(0, 4, 4, []byte{1, 2, 3, 4}))); err != nil || len(img.Segments) != 1 {
		t.Fatalf("a good ELF: %v", err)
	}
	for _, sz := range [][2]uint32{{0xfffffff0, 4}, {4, 0xfffffff0}} {
		_, err := ParseELF("huge.elf", bytes.NewReader(tinyELF(0, sz[0], sz[1], []byte{1, 2, 3, 4})))
		if !errors.Is(err, ErrBadImage) {
			t.Errorf("filesz %#x memsz %#x: %v", sz[0], sz[1], err)
		}
	}
}

func FuzzParseELF(f *testing.F) {
	f.Add(tinyELF(0, 4, 4, []byte{1, 2, 3, 4}))
	f.Add(tinyELF(0x100, 0xffffff00, 0xffffff00, []byte{1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseELF("fuzz.elf", bytes.NewReader(b))
	})
}

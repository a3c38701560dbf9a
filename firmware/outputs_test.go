package firmware_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/flash"
)

// testdata/bluepill.elf is blink-bluepill's firmware.elf, stripped;
// testdata/bluepill.objcopy.hex is `arm-none-eabi-objcopy -O ihex` of it.

// TestFromELFMatchesObjcopyHex: kiln's HEX holds the same bytes at the same
// addresses as objcopy's, and the BIN is their extent.
func TestFromELFMatchesObjcopyHex(t *testing.T) {
	data, err := os.ReadFile("testdata/bluepill.elf")
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := firmware.FromELF("bluepill.elf", data)
	if err != nil {
		t.Fatal(err)
	}
	golden, err := os.ReadFile("testdata/bluepill.objcopy.hex")
	if err != nil {
		t.Fatal(err)
	}
	want, err := flash.ParseHex("objcopy.hex", bytes.NewReader(golden))
	if err != nil {
		t.Fatal(err)
	}
	got, err := flash.ParseHex("kiln.hex", bytes.NewReader(imgs.HEX))
	if err != nil {
		t.Fatal(err)
	}
	if got.SHA256() != want.SHA256() || got.Extent() != want.Extent() {
		t.Fatalf("kiln's HEX %s %+v, objcopy's %s %+v", got.SHA256(), got.Extent(), want.SHA256(), want.Extent())
	}
	load, flat := want.Flat(0xff)
	if imgs.Load != load || !bytes.Equal(imgs.BIN, flat) {
		t.Fatalf("BIN at 0x%x (%d bytes), want 0x%x (%d bytes)", imgs.Load, len(imgs.BIN), load, len(flat))
	}
	for i, line := range strings.Split(strings.TrimSpace(string(imgs.HEX)), "\n") {
		if !strings.HasPrefix(line, ":") || len(line) > 1+2*(5+16) {
			t.Fatalf("HEX line %d %q is not a record of at most 16 data bytes", i+1, line)
		}
	}
}

// TestFromELFRejects: what is not an ELF, or holds no loadable bytes, is
// an error wrapping flash.ErrBadImage.
func TestFromELFRejects(t *testing.T) {
	if _, err := firmware.FromELF("x", []byte("not an elf")); !errors.Is(err, flash.ErrBadImage) {
		t.Fatalf("FromELF(garbage) = %v, want ErrBadImage", err)
	}
}

func ExampleFromELF() {
	data, err := os.ReadFile("testdata/bluepill.elf")
	if err != nil {
		fmt.Println(err)
		return
	}
	imgs, err := firmware.FromELF("bluepill.elf", data)
	if err != nil {
		fmt.Println(err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(imgs.HEX)), "\n")
	fmt.Printf("load 0x%08x, %d bytes\n", imgs.Load, len(imgs.BIN))
	fmt.Println(lines[0])
	fmt.Println(lines[len(lines)-1])
	// Output:
	// load 0x08000000, 904 bytes
	// :020000040800F2
	// :00000001FF
}

package firmware

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/marcinbor85/gohex"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// Output file names in a build's store entry and output directory.
const (
	ELFName      = "firmware.elf"
	HEXName      = "firmware.hex"
	BINName      = "firmware.bin"
	DFUName      = "firmware.dfu" // boards whose ROM speaks DfuSe only
	ManifestName = "manifest.json"
)

// Images is what kiln makes from a linked ELF: the flash image (its loadable
// segments at their load addresses), Intel HEX of those segments, and a raw
// binary of their extent with the gaps filled with 0xff.
type Images struct {
	Image *flash.Image
	HEX   []byte
	BIN   []byte
	// Load is the address of BIN's first byte.
	Load uint32
}

// hexLine is the data bytes per HEX record, as avr-objcopy writes them.
const hexLine = 16

// FromELF makes HEX and BIN from the loadable segments (PT_LOAD, at their
// physical addresses) of the ELF file data. name is used in errors.
func FromELF(name string, data []byte) (*Images, error) {
	img, err := flash.ParseELF(name, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	if img.Size() == 0 {
		return nil, fmt.Errorf("firmware: %s: %w: no loadable bytes", name, flash.ErrBadImage)
	}
	mem := gohex.NewMemory()
	for _, s := range img.Segments {
		if err := mem.AddBinary(s.Addr, s.Data); err != nil {
			return nil, fmt.Errorf("firmware: %s: segment at 0x%x: %w", name, s.Addr, err)
		}
	}
	var h bytes.Buffer
	if err := mem.DumpIntelHex(&h, hexLine); err != nil {
		return nil, fmt.Errorf("firmware: %s: write hex: %w", name, err)
	}
	load, bin := img.Flat(0xff)
	return &Images{Image: img, HEX: h.Bytes(), BIN: bin, Load: load}, nil
}

// dfuIDs is the USB ID a board's .dfu names: the board's DFU-mode ID when
// it lists ST's (0483:df11), else ffff:ffff, which matches any device.
func dfuIDs(b *boards.Board) (vid, pid uint16) {
	ids, _ := b.USBIDs()
	for _, id := range ids {
		if id == [2]uint16{0x0483, 0xdf11} {
			return id[0], id[1]
		}
	}
	return 0xffff, 0xffff
}

// sha256Hex is the hex SHA-256 of b.
func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

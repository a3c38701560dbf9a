package flash

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// DFU file format (DFU 1.1 appendix B, and ST's DfuSe file format UM0391):
//
//	[prefix] payload suffix
//
// The 16-byte suffix is bcdDevice, idProduct, idVendor, bcdDFU (0x011a for
// DfuSe), "UFD", bLength and a CRC-32 over everything before the CRC
// (initial value 0xffffffff, no final inversion, as dfu-suffix computes it).
// A DfuSe file starts with the prefix "DfuSe", version 1, the image size and
// the number of targets; each target ("Target", alternate setting, name,
// size, element count) holds elements of (address, size, bytes).

// DfuSuffix is the trailer of a DFU file.
type DfuSuffix struct {
	Device, Product, Vendor uint16
	DFUVersion              uint16
	Length                  int
	CRC                     uint32
}

const (
	dfuSuffixLen  = 16
	dfuSePrefix   = 11
	dfuSeTarget   = 274
	dfuSeElement  = 8
	dfuSeVersion  = 0x011a
	dfuAnyVersion = 0xffff
)

// dfuCRC is the CRC-32 dfu-suffix stores: the IEEE CRC without its final
// inversion.
func dfuCRC(b []byte) uint32 { return ^crc32.ChecksumIEEE(b) }

// ParseDfuSuffix reads and checks the suffix of a DFU file.
func ParseDfuSuffix(data []byte) (DfuSuffix, error) {
	var s DfuSuffix
	if len(data) < dfuSuffixLen {
		return s, fmt.Errorf("%d bytes is too short for a DFU suffix", len(data))
	}
	t := data[len(data)-dfuSuffixLen:]
	if string(t[8:11]) != "UFD" {
		return s, fmt.Errorf("no DFU suffix (no \"UFD\" signature)")
	}
	s.Device = binary.LittleEndian.Uint16(t[0:])
	s.Product = binary.LittleEndian.Uint16(t[2:])
	s.Vendor = binary.LittleEndian.Uint16(t[4:])
	s.DFUVersion = binary.LittleEndian.Uint16(t[6:])
	s.Length = int(t[11])
	s.CRC = binary.LittleEndian.Uint32(t[12:])
	if s.Length < dfuSuffixLen || s.Length > len(data) {
		return s, fmt.Errorf("DFU suffix length %d", s.Length)
	}
	if crc := dfuCRC(data[:len(data)-4]); crc != s.CRC {
		return s, fmt.Errorf("DFU suffix CRC 0x%08x, but the file's CRC is 0x%08x: the file is damaged", s.CRC, crc)
	}
	return s, nil
}

// ParseDfu reads a .dfu file. A DfuSe file carries its addresses (every
// element of every target becomes a segment; the flasher picks the
// alternate setting by address, not by the target's number); a plain
// DFU file (dfu-suffix -a on a raw binary) is written at addr, which must be
// given then; a TI Stellaris prefix (dfu-prefix -s) carries its own.
func ParseDfu(name string, data []byte, addr *uint32) (*Image, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadImage, name, fmt.Sprintf(format, a...))
	}
	suf, err := ParseDfuSuffix(data)
	if err != nil {
		return nil, bad("%v", err)
	}
	body := data[:len(data)-suf.Length]
	switch {
	case bytes.HasPrefix(body, []byte("DfuSe")):
		if suf.DFUVersion != dfuSeVersion {
			return nil, bad("DfuSe prefix, but the suffix says DFU version 0x%04x, not 0x011a", suf.DFUVersion)
		}
		segs, err := parseDfuSe(body, suf.Length)
		if err != nil {
			return nil, bad("%v", err)
		}
		return NewImage(name, segs...)
	case suf.DFUVersion == dfuSeVersion:
		return nil, bad("the suffix says DfuSe (0x011a) but the file has no DfuSe prefix")
	case len(body) >= 2 && body[0]&0x3f == 0x1a && body[1] == 0x3f:
		return nil, bad("NXP LPC DFU prefix: kiln writes no LPC parts")
	case len(body) >= 8 && body[0] == 0x01 && body[1] == 0x00 && int(binary.LittleEndian.Uint32(body[4:])) == len(body)-8:
		// TI Stellaris prefix: the address in KiB, the payload length.
		a := uint32(binary.LittleEndian.Uint16(body[2:])) * 1024
		return ParseBin(name, body[8:], a)
	}
	if addr == nil {
		return nil, fmt.Errorf("%s: a DFU file without a DfuSe prefix has no address: give --address", name)
	}
	return ParseBin(name, body, *addr)
}

// parseDfuSe reads the prefix, targets and elements. The prefix's image
// size counts the whole file, suffix included (as ST's tools and dfuse-pack
// write it); a size without the suffix is accepted too.
func parseDfuSe(b []byte, suffix int) ([]Segment, error) {
	if len(b) < dfuSePrefix {
		return nil, fmt.Errorf("DfuSe prefix is truncated")
	}
	if b[5] != 1 {
		return nil, fmt.Errorf("DfuSe version %d, want 1", b[5])
	}
	if size := int64(binary.LittleEndian.Uint32(b[6:])); size != int64(len(b)+suffix) && size != int64(len(b)) {
		return nil, fmt.Errorf("DfuSe image size %d, but the file holds %d bytes", size, len(b)+suffix)
	}
	targets := int(b[10])
	if targets == 0 {
		return nil, fmt.Errorf("DfuSe file has no targets")
	}
	off := dfuSePrefix
	var segs []Segment
	for t := 0; t < targets; t++ {
		if len(b)-off < dfuSeTarget {
			return nil, fmt.Errorf("target %d: truncated target prefix at offset %d", t, off)
		}
		h := b[off : off+dfuSeTarget]
		if string(h[:6]) != "Target" {
			return nil, fmt.Errorf("target %d: no \"Target\" signature at offset %d", t, off)
		}
		size := int64(binary.LittleEndian.Uint32(h[266:]))
		n := binary.LittleEndian.Uint32(h[270:])
		off += dfuSeTarget
		if size > int64(len(b)-off) {
			return nil, fmt.Errorf("target %d: size %d runs past the end of the file", t, size)
		}
		end := off + int(size)
		for e := uint32(0); e < n; e++ {
			if end-off < dfuSeElement {
				return nil, fmt.Errorf("target %d element %d: truncated element header at offset %d", t, e, off)
			}
			addr := binary.LittleEndian.Uint32(b[off:])
			esz := int64(binary.LittleEndian.Uint32(b[off+4:]))
			off += dfuSeElement
			if esz > int64(end-off) {
				return nil, fmt.Errorf("target %d element %d at 0x%08x: %d bytes, but only %d are left: truncated element", t, e, addr, esz, end-off)
			}
			if uint64(addr)+uint64(esz) > 1<<32 {
				return nil, fmt.Errorf("target %d element %d at 0x%08x: runs past 4 GiB", t, e, addr)
			}
			segs = append(segs, Segment{Addr: addr, Data: b[off : off+int(esz)]})
			off += int(esz)
		}
		if off != end {
			return nil, fmt.Errorf("target %d: %d bytes after its %d elements", t, end-off, n)
		}
	}
	if off != len(b) {
		return nil, fmt.Errorf("%d bytes after the last target", len(b)-off)
	}
	return segs, nil
}

// EncodeDfuSe writes img as a DfuSe file for a device vid:pid: one target
// (alternate setting 0, "Internal Flash") with one element per segment,
// and the suffix with its CRC. dfu-util and ST's tools read it.
func EncodeDfuSe(img *Image, vid, pid uint16) []byte {
	size := dfuSePrefix + dfuSeTarget
	for _, s := range img.Segments {
		size += dfuSeElement + len(s.Data)
	}
	b := make([]byte, 0, size+dfuSuffixLen)
	b = append(b, "DfuSe"...)
	b = append(b, 1)
	b = binary.LittleEndian.AppendUint32(b, uint32(size+dfuSuffixLen)) // the whole file
	b = append(b, 1)
	var name [255]byte
	copy(name[:], "Internal Flash")
	b = append(b, "Target"...)
	b = append(b, 0)                           // alternate setting
	b = binary.LittleEndian.AppendUint32(b, 1) // named
	b = append(b, name[:]...)                  // name
	b = binary.LittleEndian.AppendUint32(b, uint32(size-dfuSePrefix-dfuSeTarget))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(img.Segments)))
	for _, s := range img.Segments {
		b = binary.LittleEndian.AppendUint32(b, s.Addr)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s.Data)))
		b = append(b, s.Data...)
	}
	b = binary.LittleEndian.AppendUint16(b, dfuAnyVersion) // bcdDevice: any
	b = binary.LittleEndian.AppendUint16(b, pid)
	b = binary.LittleEndian.AppendUint16(b, vid)
	b = binary.LittleEndian.AppendUint16(b, dfuSeVersion)
	b = append(b, 'U', 'F', 'D', dfuSuffixLen)
	return binary.LittleEndian.AppendUint32(b, dfuCRC(b))
}

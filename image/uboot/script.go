package uboot

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Legacy image header constants (U-Boot include/image.h).
const (
	imageMagic  = 0x27051956
	headerSize  = 64
	osLinux     = 5
	archARM64   = 22
	typeScript  = 6
	compNone    = 0
	nameSize    = 32
	maxNameSize = nameSize - 1
)

// Script wraps a boot script's text in a legacy "script" image for arm64,
// as `mkimage -A arm64 -O linux -T script -C none -n NAME -d FILE` does with
// SOURCE_DATE_EPOCH=epoch. U-Boot's distro boot `source`s it from the boot
// partition as boot.scr.
func Script(text []byte, name string, epoch int64) ([]byte, error) {
	if len(name) > maxNameSize {
		return nil, fmt.Errorf("uboot script: name %q longer than %d bytes", name, maxNameSize)
	}
	if epoch < 0 || epoch > 0xffffffff {
		return nil, fmt.Errorf("uboot script: time %d does not fit the header", epoch)
	}
	data := make([]byte, 8, 8+len(text))
	binary.BigEndian.PutUint32(data, uint32(len(text))) // then a 0 ends the list
	data = append(data, text...)
	h := make([]byte, headerSize)
	binary.BigEndian.PutUint32(h[0:], imageMagic)
	binary.BigEndian.PutUint32(h[8:], uint32(epoch))
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	binary.BigEndian.PutUint32(h[24:], crc32.ChecksumIEEE(data))
	h[28], h[29], h[30], h[31] = osLinux, archARM64, typeScript, compNone
	copy(h[32:], name)
	binary.BigEndian.PutUint32(h[4:], crc32.ChecksumIEEE(h))
	return append(h, data...), nil
}

// ScriptText returns the text of a legacy script image made by Script (or
// mkimage), checking both CRCs.
func ScriptText(img []byte) ([]byte, error) {
	if len(img) < headerSize+8 || binary.BigEndian.Uint32(img) != imageMagic {
		return nil, fmt.Errorf("uboot script: not a legacy image")
	}
	h := append([]byte(nil), img[:headerSize]...)
	hcrc := binary.BigEndian.Uint32(h[4:])
	binary.BigEndian.PutUint32(h[4:], 0)
	if crc32.ChecksumIEEE(h) != hcrc {
		return nil, fmt.Errorf("uboot script: bad header CRC")
	}
	if h[30] != typeScript {
		return nil, fmt.Errorf("uboot script: image type %d is not a script", h[30])
	}
	size := binary.BigEndian.Uint32(h[12:])
	data := img[headerSize:]
	if uint64(size) > uint64(len(data)) || crc32.ChecksumIEEE(data[:size]) != binary.BigEndian.Uint32(h[24:]) {
		return nil, fmt.Errorf("uboot script: bad data CRC")
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+8 > uint64(size) {
		return nil, fmt.Errorf("uboot script: length %d past the data", n)
	}
	return data[8 : 8+n], nil
}

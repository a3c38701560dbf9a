// Package optest makes artifacts for tests of device operations.
package optest

import "encoding/binary"

// AVRELF is a minimal AVR ELF32 executable: one PT_LOAD segment holding data
// at addr, and avr-gcc's architecture number arch (5 for avr5, 6 for avr6)
// in e_flags with binutils' link-relax bit, as avr-gcc writes it.
func AVRELF(arch, addr uint32, data []byte) []byte {
	const ehsize, phsize = 52, 32
	b := make([]byte, ehsize+phsize)
	copy(b, "\x7fELF\x01\x01\x01") // 32-bit, little-endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 83) // EM_AVR
	le.PutUint32(b[20:], 1)  // EV_CURRENT
	le.PutUint32(b[28:], ehsize)
	le.PutUint32(b[36:], 0x80|arch)
	le.PutUint16(b[40:], ehsize)
	le.PutUint16(b[42:], phsize)
	le.PutUint16(b[44:], 1) // e_phnum
	p := b[ehsize:]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], ehsize+phsize)
	le.PutUint32(p[8:], addr)
	le.PutUint32(p[12:], addr)
	le.PutUint32(p[16:], uint32(len(data)))
	le.PutUint32(p[20:], uint32(len(data)))
	le.PutUint32(p[24:], 5) // R+X
	return append(b, data...)
}

// Package stm32test is a stateful model of the STM32 system-memory
// bootloader's USART protocol (ST AN3155), for tests, benchmarks and
// `kiln emulate`.
//
// A Device holds the board's flash (erase units from its DfuSe layout), RAM,
// product ID and 96-bit unique ID, and runs the bootloader's state machine:
// it waits for the 0x7F autobaud byte, answers ACK, then serves Get, Get
// Version, Get ID, Read Memory, Go, Write Memory, Erase (0x43) or Extended
// Erase (0x44) — whichever the family's bootloader lists — and, when
// Checksum is set, Get Checksum (0xA1). Every command byte must come with its
// complement and every address and data block with its XOR checksum, or the
// device answers NACK, as the ROM does.
//
// Flash behaves like the silicon: erase sets a page to 0xFF; programming an
// STM32F1 half-word that is not erased fails with PGERR (unless it writes
// 0x0000) and the bootloader answers NACK, leaving the half-words before it
// programmed; on the F2/F4 family programming can only clear bits (the
// result is old AND new). Timing, when asked for, paces bytes at the baud
// rate (10 bits a byte) and takes the datasheets' typical page erase and
// program times. Faults (drop, corrupt, delay, NACK, stop answering, random
// with a seed, and a flash cell that fails to program) come from
// flash/internal/emuwire, which every kiln serial emulator shares, plus the
// bootloader-specific WeakBit.
package stm32test

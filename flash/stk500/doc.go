// Package stk500 writes and reads AVR flash through a bootloader that speaks
// STK500 version 1 the way Optiboot (Arduino Uno, Nano) implements it.
//
// Every request ends with CRC_EOP (0x20); every answer is INSYNC (0x14),
// the payload, then OK (0x10). Optiboot implements GET_SYNC, GET_PARAMETER
// (software major and minor version; 0x03 for anything else),
// SET_DEVICE and SET_DEVICE_EXT (read and ignored), ENTER/LEAVE_PROGMODE,
// LOAD_ADDRESS (a word address), PROG_PAGE and READ_PAGE (the byte count
// is sent as 16 bits, but Optiboot keeps only the low 8 on chips whose pages
// are under 256 bytes, such as the ATmega328P: 0 means 256), READ_SIGN and
// UNIVERSAL (answered with 0).
// A request without its CRC_EOP makes Optiboot reset itself into the
// application, and so does a second of silence: the client re-pulses the
// reset line and syncs again before it retries a page.
//
// The client checks the device signature against the board before it writes,
// programs page by page (Optiboot erases each page before it writes it),
// sending each LOAD_ADDRESS in the same write as the request it addresses
// (one round trip per page), and reads back in chunks as large as the
// bootloader's byte count and its watchdog allow: 256 bytes on the
// ATmega328P, twice avrdude's 128.
// Package stk500test is the device side, for tests and `kiln emulate`.
package stk500

// Package stk500 writes and reads AVR flash through a bootloader that speaks
// STK500 version 1 the way Optiboot (Arduino Uno, Nano) implements it.
//
// Every request ends with CRC_EOP (0x20); every answer is INSYNC (0x14),
// the payload, then OK (0x10). Optiboot implements GET_SYNC, GET_PARAMETER
// (software major and minor version; 0x03 for anything else),
// SET_DEVICE and SET_DEVICE_EXT (read and ignored), ENTER/LEAVE_PROGMODE,
// LOAD_ADDRESS (a word address), PROG_PAGE and READ_PAGE (with a 16-bit
// byte count since version 5), READ_SIGN and UNIVERSAL (answered with 0).
// A request without its CRC_EOP makes Optiboot reset itself into the
// application, and so does a second of silence: the client re-pulses the
// reset line and syncs again before it retries a page.
//
// The client checks the device signature against the board before it writes,
// programs page by page (Optiboot erases each page before it writes it) and
// reads back in chunks as large as the bootloader and its watchdog allow.
// Package stk500test is the device side, for tests and `kiln emulate`.
package stk500

// Package stk500test is a stateful model of an ATmega328P running Optiboot
// v8.3, the device side of package stk500, faithful enough that avrdude
// (`-c arduino`) and kiln agree with it.
//
// It models what a flasher can observe: the flash array with the bootloader
// section at its top (the lock bits make the self-programming instructions
// ignore it), the page buffer (erased after every page write, filled word by
// word, wrapping inside the page), page-erase-then-write, byte counts as
// Optiboot keeps them (8 bits on the ATmega328P, whose pages are 128 bytes:
// a READ_PAGE of 4096 bytes answers 256), the signature,
// Optiboot's one-second watchdog (no byte for a second, a missing CRC_EOP or
// LEAVE_PROGMODE start the application, which ignores the line until the
// next reset), and, for benchmarks, the UART's pace at the baud rate.
// Faults (drop, corrupt, delay, NOSYNC, stop answering; at fixed positions
// or at random from a seed) come from emuwire.Faults.
//
// The tests hold the model to the real thing: the same requests sent to
// Optiboot v8.3 running in simavr get the same answers, byte for byte.
package stk500test

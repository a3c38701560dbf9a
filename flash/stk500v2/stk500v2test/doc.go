// Package stk500v2test is a stateful model of an ATmega2560 running the
// Arduino Mega 2560 STK500v2 bootloader (stk500boot.c as Arduino ships it),
// the device side of package stk500v2, faithful enough that avrdude
// (`-c wiring`) and kiln agree with it.
//
// Modelled: the frame state machine (a frame with a bad checksum or token
// is dropped silently; the host's sequence number is echoed), the erase
// pointer that CMD_PROGRAM_FLASH_ISP advances one page per write whatever
// the load address (flash is only ever programmed from 1 to 0, so a page
// written without its erase holds old AND new), CMD_CHIP_ERASE_ISP resetting
// that pointer and answering STATUS_CMD_FAILED, the auto-incrementing
// address, the boot section the lock bits protect, the signature through
// CMD_SPI_MULTI, and the timeouts: no first byte within a second starts the
// application; later, a second of silence starts it only if flash word 0 is
// programmed. Faults come from emuwire.Faults, as in stk500test.
//
// The tests hold the model to the real thing: the same frames sent to
// Debian's build of the bootloader running in simavr get the same answers,
// byte for byte.
package stk500v2test

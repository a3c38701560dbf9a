// Package swd flashes Cortex-M microcontrollers through a debug probe over
// Serial Wire Debug, the way OpenOCD, pyOCD and st-flash do on the bench.
//
// The layers, from the wire up:
//
//   - Transport carries one probe command packet and returns its answer. A
//     CMSIS-DAP v2 probe is two USB bulk endpoints (usb.go, through gousb);
//     swdtest.Probe is the in-process model.
//   - DAP speaks CMSIS-DAP: Info, Connect, SWJ sequences, Transfer and
//     TransferBlock of DP and AP registers.
//   - adi is ARM's Debug Interface v5 on top: the DP's SELECT, CTRL/STAT
//     power-up and sticky-error recovery, and a MEM-AP whose TAR never
//     auto-increments across a 1 KiB boundary within one burst.
//   - Target halts the core (DHCSR, DEMCR, AIRCR), reads the chip's
//     DBGMCU_IDCODE and refuses a chip that is not the board's, then drives the
//     chip family's flash controller: unlock, erase only the pages or sectors
//     the image touches, program, lock. Families are data (families.go).
//
// Every write ends like every other kiln back end: flash.Program reads the
// image's extent back through the MEM-AP and compares SHA-256.
//
// Read-out protection (RDP level 1) is reported with its consequence:
// removing it mass-erases the chip, so Target does that only when
// Options.Unprotect asks for it.
package swd

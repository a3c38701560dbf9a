// Package simavr runs a real AVR bootloader — Optiboot, as shipped on the
// Arduino Uno — inside the simavr simulator, with the MCU's UART on a
// pseudo-terminal, so kiln's serial flashing can be proven against the
// bootloader's own code rather than against a model of it.
//
// The simulator is a small C program (harness/optiboot_sim.c) linked against
// Debian's libsimavr and its uart_pty part. Build compiles it with the system
// C compiler; Start runs it. The harness
//
//   - loads the bootloader image and starts the core at the boot address
//     (the BOOTRST fuse), setting MCUSR.EXTRF on every reset as an external
//     reset does, else Optiboot would jump straight to the application;
//   - paces the simulation to wall-clock time, and carries bytes on the
//     simulated line at the true frame rate (10 bit times a byte for 8N1 at
//     the baud rate the firmware programs), with an ATmega's receive
//     buffering (two bytes plus the shift register) and overruns;
//   - keeps SPMEN set for 4 ms after each page erase and page write, as the
//     chip's flash does;
//   - resets the MCU when the pty is opened, since a pty has no DTR line for
//     the usual Arduino auto-reset;
//   - holds the core (does not execute it) once it leaves the bootloader for
//     the application, so a just-written test image cannot run;
//   - skips whole turns of the bootloader's busy-wait loops up to the next
//     simulator timer (exactly: nothing such a loop reads changes between
//     timers), so real-time simulation costs little host CPU;
//   - dumps the simulated flash on request (Sim.Flash).
//
// A flashing tool sees Sim.Port as it would see /dev/ttyACM0 on a real Uno.
// Sim.Stats counts the bytes that crossed the line and any receive overruns
// (bytes a real ATmega would have lost).
//
// A second harness (harness/firmware_sim.c, RunFirmware) runs a whole flash
// image, application and optionally bootloader, for a number of core cycles
// and reports what the firmware did, each at its cycle: the bytes UART0
// sent (timed at the true frame length), level changes of chosen port pins,
// the bootloader handing over to the application, watchdog resets, halts.
// Bytes for UART0's receiver go on the line with the same wire model as
// above; ADC channels and input pins can be driven. It keeps MCUSR's reset
// flags across resets as a real ATmega does (simavr clears them, and then
// Optiboot, started by an external reset and timing out through the
// watchdog, cannot turn the watchdog off). FirmwareHarness compiles it once
// into the user's cache. kiln run and kiln test use it (package sim).
package simavr

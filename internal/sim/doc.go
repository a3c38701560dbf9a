// Package sim runs a firmware image on a simulated microcontroller: the
// exact bytes a flasher would write, on simavr for AVR boards and on
// qemu-system-arm for Cortex-M boards whose chip QEMU models closely enough
// (the board file's [sim] table names the engine, the machine and the
// model's limits). A run reports what the firmware did with simulated
// timestamps: the bytes its console UART sent, the level changes of the
// pins asked for, and when it left its bootloader.
//
// Simulated time is the board's own clock on simavr (core cycles at
// cpu_hz). QEMU has no cycle model: time there is its icount clock, one
// instruction every 2^shift ns with the shift chosen nearest the board's
// clock, read back over QMP (query-replay); the run stops within a few
// milliseconds of wall time after the requested simulated time.
//
// Check holds an image against the board and its model before anything
// runs: built for another MCU, outside the model's flash, a stack past the
// model's RAM, no loadable bytes. Expect checks a run against a recipe's
// [[test]] expectations, and JUnit writes the results for CI.
package sim

// Package serialport opens the serial line a bootloader listens on and
// pulses the board's reset: the go.bug.st/serial edge of kiln's flashers.
//
// A port is a device path (/dev/ttyACM0), a pseudo-terminal (/dev/pts/3),
// "auto" (the one USB serial port whose VID:PID is in the board file) or
// "usb:SERIAL" (the USB serial port with that serial number). Protocol code
// never sees the serial library: a Port is an io.ReadWriteCloser with a
// Reset method.
//
// Pseudo-terminals have no modem lines: setting DTR or RTS fails with
// "inappropriate ioctl for device". That is not an error here: the port
// notes once that it has no modem lines and its reset pulse does nothing,
// so emulators and simulators behind a pty flash like a USB adapter.
//
// Reset kinds: "dtr" and "rts" (Arduino auto-reset: release, then assert the
// line; the board's capacitor turns the edge into a reset pulse), "1200bps"
// (open at 1200 baud and close: the board's USB stack restarts into its
// bootloader), "gpio:NAME" (a fixture's GPIO wired to the reset pin, driven
// through periph.io's gpio.PinOut) and "none".
package serialport

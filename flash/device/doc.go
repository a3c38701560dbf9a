// Package device opens a flashing session: it picks the back end by
// protocol (the board's default unless one is asked for) and the line by
// port spec, and hands back a flash.Target that can also be closed.
//
// Port specs:
//
//	/dev/ttyACM0, /dev/pts/3   a serial device or pseudo-terminal
//	auto                        the one USB serial port with the board's VID:PID
//	usb:SERIAL                  the USB serial port with that serial number
//	emu:BOARD                   an emulator of BOARD, in process, over a pipe
//
// Back ends plug in at three marked places in device.go: connect (a
// protocol over a serial line: build the client on the Line, connect, return
// NewSession), NewEmulator (the protocol's device model for emu: and
// `kiln emulate`), and Open's switch for protocols that are not serial
// (dfuse owns its own port specs, such as dfu:VID:PID).
package device

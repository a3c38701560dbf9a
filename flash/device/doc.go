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
//	dfu:..., swd:..., ssh://... a port a back end owns by its prefix
//
// Back ends plug in at one place: the table in backends.go, one Backend
// per protocol name a board file may use. An entry gives Connect (a
// protocol over a serial Line) or Open (a back end that owns its port
// specs), Emulate or OpenEmulator (its device model, for emu:BOARD and
// kiln emulate), the reset kinds it can pulse, the port prefixes it owns
// and Hints for its errors. Resolve picks the entry for a port and board;
// nothing else in kiln branches on a protocol name. TestBackendTable holds
// every board file's protocols against the table and every entry against
// its emulator.
package device

package dfu

import (
	"encoding/binary"
	"fmt"
	"strings"

	"kiln.dev/kiln/flash/usbport"
)

// Port selects a USB DFU device: "dfu:" (the only DFU device present),
// "dfu:VID:PID", and either followed by ",serial=S" (package usbport).
type Port = usbport.Port

// Candidate is a USB device in DFU mode found on the bus.
type Candidate = usbport.Candidate

// ParsePort reads a dfu: port.
func ParsePort(s string) (Port, error) { return usbport.Parse("dfu", s) }

// choose picks the one DFU device the port selects; runtime names devices
// seen in DFU run-time mode, for the message when none is in DFU mode.
func choose(p Port, found []Candidate, runtime []string) (int, error) {
	why := ""
	if len(runtime) > 0 {
		why = strings.Join(runtime, ", ") + " in run-time mode: start the bootloader, e.g. with BOOT0 high"
	}
	return p.Choose(found, "DFU device", why)
}

// dfuInterface is one DFU-mode interface found in a configuration
// descriptor, with its functional descriptor.
type dfuInterface struct {
	Number       int
	Alts         []int // alternate setting numbers, in order
	Strings      []int // iInterface of each alternate setting
	Attributes   uint8
	TransferSize int
	Version      uint16
}

// parseConfig finds the DFU-mode interface (class 0xfe, subclass 1,
// protocol 2) in a raw configuration descriptor and its DFU functional
// descriptor (type 0x21).
func parseConfig(b []byte) (*dfuInterface, error) {
	var d *dfuInterface
	inDFU := false
	for len(b) >= 2 {
		n := int(b[0])
		if n < 2 || n > len(b) {
			return nil, fmt.Errorf("dfu: configuration descriptor: bad descriptor length %d", n)
		}
		desc := b[:n]
		switch desc[1] {
		case 0x04: // interface
			if n < 9 {
				return nil, fmt.Errorf("dfu: configuration descriptor: interface descriptor of %d bytes", n)
			}
			inDFU = desc[5] == 0xfe && desc[6] == 0x01 && desc[7] == 0x02
			if inDFU {
				if d == nil {
					d = &dfuInterface{Number: int(desc[2])}
				}
				if int(desc[2]) == d.Number {
					d.Alts = append(d.Alts, int(desc[3]))
					d.Strings = append(d.Strings, int(desc[8]))
				}
			}
		case 0x21: // DFU functional
			if inDFU && d != nil && n >= 7 {
				d.Attributes = desc[2]
				d.TransferSize = int(binary.LittleEndian.Uint16(desc[5:7]))
				if n >= 9 {
					d.Version = binary.LittleEndian.Uint16(desc[7:9])
				}
			}
		}
		b = b[n:]
	}
	if d == nil {
		return nil, fmt.Errorf("dfu: no DFU-mode interface in the configuration")
	}
	return d, nil
}

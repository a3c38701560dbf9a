package swdtest

import (
	"context"
	"errors"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/usbshim"
)

// DAPLink's USB ID: what a CMSIS-DAP v2 probe on a Nucleo-less bench shows.
const (
	VID = 0x0d28
	PID = 0x0204
)

// USB is the probe as a CMSIS-DAP v2 USB device: a vendor-class interface
// named "CMSIS-DAP" with a bulk OUT endpoint for commands and a bulk IN
// endpoint for answers. Serve it to libusb programs through usbshim.
type USB struct {
	Probe *Probe
	out   answers
}

var (
	_ usbshim.Device     = (*USB)(nil)
	_ usbshim.BulkDevice = (*USB)(nil)
)

// Descriptor answers GET_DESCRIPTOR.
func (u *USB) Descriptor(val uint16) ([]byte, bool) {
	mps := byte(u.Probe.packetSize() & 0xff)
	hi := byte(u.Probe.packetSize() >> 8)
	return usbFace{vid: VID, pid: PID, class: [3]byte{0xef, 0x02, 0x01},
		config: []byte{9, 2, 32, 0, 1, 1, 0, 0x80, 0x32,
			9, 4, 0, 0, 2, 0xff, 0, 0, 4,
			7, 5, 0x01, 2, mps, hi, 0,
			7, 5, 0x81, 2, mps, hi, 0},
		strings: []string{"kiln", "kiln CMSIS-DAP model", u.Probe.Serial, "CMSIS-DAP v2 Interface"}}.descriptor(val)
}

// Control refuses class and vendor requests: a CMSIS-DAP v2 probe has none.
func (u *USB) Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error) {
	return control(rType, req)
}

// Bulk carries a command on EP1 OUT and hands its answer out on EP1 IN.
func (u *USB) Bulk(ctx context.Context, ep uint8, data []byte) (int, error) {
	switch ep {
	case 0x01:
		resp, err := u.Probe.Exchange(ctx, data)
		if errors.Is(err, flash.ErrNoDevice) {
			return 0, err
		}
		if err == nil {
			u.out.push(resp)
		}
		return len(data), nil
	case 0x81:
		return u.out.pop(data)
	}
	return 0, usbshim.ErrStall
}

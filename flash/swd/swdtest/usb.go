package swdtest

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"

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
	mu    sync.Mutex
	fifo  [][]byte
}

var (
	_ usbshim.Device     = (*USB)(nil)
	_ usbshim.BulkDevice = (*USB)(nil)
)

// Descriptor answers GET_DESCRIPTOR.
func (u *USB) Descriptor(val uint16) ([]byte, bool) {
	switch val >> 8 {
	case 1:
		b := []byte{18, 1, 0x00, 0x02, 0xef, 0x02, 0x01, 64}
		b = binary.LittleEndian.AppendUint16(b, VID)
		b = binary.LittleEndian.AppendUint16(b, PID)
		b = binary.LittleEndian.AppendUint16(b, 0x0100)
		return append(b, 1, 2, 3, 1), true
	case 2:
		mps := uint16(u.Probe.packetSize())
		b := []byte{9, 2, 32, 0, 1, 1, 0, 0x80, 0x32,
			9, 4, 0, 0, 2, 0xff, 0, 0, 4,
			7, 5, 0x01, 2, byte(mps), byte(mps >> 8), 0,
			7, 5, 0x81, 2, byte(mps), byte(mps >> 8), 0}
		return b, true
	case 3:
		switch val & 0xff {
		case 0:
			return usbshim.LangIDs, true
		case 1:
			return usbshim.String("kiln"), true
		case 2:
			return usbshim.String("kiln CMSIS-DAP model"), true
		case 3:
			return usbshim.String(u.Probe.Serial), true
		case 4:
			return usbshim.String("CMSIS-DAP v2 Interface"), true
		}
	}
	return nil, false
}

// Control refuses class and vendor requests: a CMSIS-DAP v2 probe has none.
func (u *USB) Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error) {
	if rType&0x60 == 0 && req == 9 { // SET_CONFIGURATION
		return 0, nil
	}
	return 0, usbshim.ErrStall
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
			u.mu.Lock()
			u.fifo = append(u.fifo, resp)
			u.mu.Unlock()
		}
		return len(data), nil
	case 0x81:
		u.mu.Lock()
		defer u.mu.Unlock()
		if len(u.fifo) == 0 {
			return 0, usbshim.ErrNotYet
		}
		n := copy(data, u.fifo[0])
		u.fifo = u.fifo[1:]
		return n, nil
	}
	return 0, usbshim.ErrStall
}

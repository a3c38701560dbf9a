package dfutest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"kiln.dev/kiln/flash/dfu"
	"kiln.dev/kiln/flash/internal/usbshim"
)

// BuildShim compiles the libusb stand-in (package usbshim) into dir and
// returns the library's path. Through it unmodified libusb programs —
// dfu-util, kiln's gousb adapter — talk to the model.
func BuildShim(dir string) (string, error) { return usbshim.Build(dir) }

// ListenUSB serves the model on a Unix socket at path, one shim
// connection after another, until the returned stop is called.
func (d *Device) ListenUSB(path string) (stop func(), err error) {
	return usbshim.Listen(path, usbDevice{d})
}

// ServeUSB answers one shim connection until it closes.
func (d *Device) ServeUSB(ctx context.Context, rw io.ReadWriter) error {
	return usbshim.Serve(ctx, rw, usbDevice{d})
}

// usbDevice is the model as the shim sees it: a STALL from the DFU model
// is a STALL on the wire.
type usbDevice struct{ d *Device }

func (u usbDevice) Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error) {
	n, err := u.d.Control(ctx, rType, req, val, idx, data)
	if errors.Is(err, dfu.ErrStall) {
		err = fmt.Errorf("%w: %w", err, usbshim.ErrStall)
	}
	return n, err
}

func (u usbDevice) SetAlt(ctx context.Context, alt int) error { return u.d.SetAlt(ctx, alt) }

// Descriptor returns the descriptor GET_DESCRIPTOR(wValue) asks for:
// the device, its one configuration (a DFU-mode interface with one
// alternate setting per memory and the DFU functional descriptor), and
// strings.
func (u usbDevice) Descriptor(val uint16) ([]byte, bool) {
	cfg := u.d.cfg
	switch val >> 8 {
	case 1:
		b := []byte{18, 1, 0x00, 0x02, 0, 0, 0, 64}
		b = binary.LittleEndian.AppendUint16(b, cfg.VID)
		b = binary.LittleEndian.AppendUint16(b, cfg.PID)
		b = binary.LittleEndian.AppendUint16(b, 0x2200)
		return append(b, 1, 2, 3, 1), true
	case 2:
		total := 9 + 9*len(cfg.Alts) + 9
		b := []byte{9, 2, byte(total), byte(total >> 8), 1, 1, 0, 0xc0, 0x32}
		for i := range cfg.Alts {
			b = append(b, 9, 4, 0, byte(i), 0, 0xfe, 1, 2, byte(4+i))
		}
		b = append(b, 9, 0x21, 0x0b, 0xff, 0x00)
		b = binary.LittleEndian.AppendUint16(b, uint16(cfg.TransferSize))
		return binary.LittleEndian.AppendUint16(b, 0x011a), true
	case 3:
		i := int(val & 0xff)
		switch {
		case i == 0:
			return usbshim.LangIDs, true
		case i == 1:
			return usbshim.String("STMicroelectronics"), true
		case i == 2:
			return usbshim.String("STM32  BOOTLOADER"), true
		case i == 3:
			return usbshim.String(cfg.Serial), true
		case i >= 4 && i-4 < len(cfg.Alts):
			return usbshim.String(cfg.Alts[i-4]), true
		}
	}
	return nil, false
}

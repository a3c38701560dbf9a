package dfutest

import (
	"context"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"unicode/utf16"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu"
)

// ShimSource is a stand-in for libusb-1.0 (C, loaded with LD_PRELOAD) that
// presents one USB device and forwards its control transfers and
// SET_INTERFACE to ServeUSB over the Unix socket named by $KILN_USB_SHIM.
// Through it unmodified libusb programs — dfu-util, kiln's gousb adapter —
// talk to the model.
//
//go:embed testdata/libusb-shim.c
var ShimSource []byte

// BuildShim compiles ShimSource with cc into dir and returns the library's
// path.
func BuildShim(dir string) (string, error) {
	src := filepath.Join(dir, "libusb-shim.c")
	so := filepath.Join(dir, "libusb-shim.so")
	if err := os.WriteFile(src, ShimSource, 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command("cc", "-O1", "-shared", "-fPIC", "-o", so, src, "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("dfutest: build libusb shim: %v\n%s", err, out)
	}
	return so, nil
}

// ListenUSB serves the model on a Unix socket at path, one shim
// connection after another, until the returned stop is called.
func (d *Device) ListenUSB(path string) (stop func(), err error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = d.ServeUSB(ctx, c)
			c.Close()
		}
	}()
	return func() { cancel(); l.Close(); <-done }, nil
}

// libusb error codes the shim returns.
const (
	usbErrIO       = -1
	usbErrNoDevice = -4
	usbErrPipe     = -9
)

func usbCode(err error) int32 {
	switch {
	case errors.Is(err, dfu.ErrStall):
		return usbErrPipe
	case errors.Is(err, flash.ErrNoDevice):
		return usbErrNoDevice
	}
	return usbErrIO
}

// ServeUSB answers one shim connection until it closes: standard
// GET_DESCRIPTOR requests from the model's descriptors, everything else
// through Control, SET_INTERFACE through SetAlt.
func (d *Device) ServeUSB(ctx context.Context, rw io.ReadWriter) error {
	var kind [1]byte
	for {
		if _, err := io.ReadFull(rw, kind[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var rc int32
		var in []byte
		switch kind[0] {
		case 'A':
			var m [2]byte
			if _, err := io.ReadFull(rw, m[:]); err != nil {
				return err
			}
			if err := d.SetAlt(ctx, int(m[1])); err != nil {
				rc = usbCode(err)
			}
		case 'C':
			var h [8]byte
			if _, err := io.ReadFull(rw, h[:]); err != nil {
				return err
			}
			rType, req := h[0], h[1]
			val, idx, n := binary.LittleEndian.Uint16(h[2:]), binary.LittleEndian.Uint16(h[4:]), int(binary.LittleEndian.Uint16(h[6:]))
			buf := make([]byte, n)
			if rType&0x80 == 0 && n > 0 {
				if _, err := io.ReadFull(rw, buf); err != nil {
					return err
				}
			}
			if rType == 0x80 && req == 6 {
				desc, ok := d.usbDescriptor(val)
				if !ok {
					rc = usbErrPipe
				} else {
					rc = int32(copy(buf, desc))
				}
			} else {
				got, err := d.Control(ctx, rType, req, val, idx, buf)
				if err != nil {
					rc = usbCode(err)
				} else {
					rc = int32(got)
				}
			}
			if rType&0x80 != 0 && rc > 0 {
				in = buf[:rc]
			}
		default:
			return fmt.Errorf("dfutest: shim message %q", kind[0])
		}
		out := binary.LittleEndian.AppendUint32(nil, uint32(rc))
		if _, err := rw.Write(append(out, in...)); err != nil {
			return err
		}
	}
}

// usbDescriptor returns the descriptor GET_DESCRIPTOR(wValue) asks for:
// the device, its one configuration (a DFU-mode interface with one
// alternate setting per memory and the DFU functional descriptor), and
// strings.
func (d *Device) usbDescriptor(val uint16) ([]byte, bool) {
	cfg := d.cfg
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
		var s string
		switch {
		case i == 0:
			return []byte{4, 3, 0x09, 0x04}, true
		case i == 1:
			s = "STMicroelectronics"
		case i == 2:
			s = "STM32  BOOTLOADER"
		case i == 3:
			s = cfg.Serial
		case i >= 4 && i-4 < len(cfg.Alts):
			s = cfg.Alts[i-4]
		default:
			return nil, false
		}
		u := utf16.Encode([]rune(s))
		b := []byte{byte(2 + 2*len(u)), 3}
		for _, c := range u {
			b = binary.LittleEndian.AppendUint16(b, c)
		}
		return b, true
	}
	return nil, false
}

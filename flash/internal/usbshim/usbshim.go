// Package usbshim lets unmodified libusb programs (dfu-util, OpenOCD,
// kiln's own gousb adapter) talk to kiln's USB device models. Source is a
// stand-in for libusb-1.0, loaded with LD_PRELOAD, that presents one USB
// device and forwards its control and bulk transfers over the Unix socket
// named by $KILN_USB_SHIM to Serve, which answers them from a Device.
package usbshim

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
)

// Source is the stand-in libusb, in C.
//
//go:embed testdata/libusb-shim.c
var Source []byte

// Build compiles Source with cc into dir and returns the library's path.
func Build(dir string) (string, error) {
	src := filepath.Join(dir, "libusb-shim.c")
	so := filepath.Join(dir, "libusb-shim.so")
	if err := os.WriteFile(src, Source, 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command("cc", "-O1", "-shared", "-fPIC", "-o", so, src, "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("usbshim: build libusb shim: %v\n%s", err, out)
	}
	return so, nil
}

// Env returns the environment entries that put the shim under a program and
// point it at the socket.
func Env(so, sock string) []string {
	return []string{"LD_PRELOAD=" + so, "KILN_USB_SHIM=" + sock}
}

var (
	// ErrStall answers a request with a STALL (LIBUSB_ERROR_PIPE).
	ErrStall = errors.New("usbshim: stall")
	// ErrNotYet means an IN endpoint has nothing to give yet.
	ErrNotYet = errors.New("usbshim: no data yet")
)

// Device is a USB device model. GET_DESCRIPTOR requests go to Descriptor;
// other control requests to Control.
type Device interface {
	Descriptor(val uint16) ([]byte, bool)
	Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error)
}

// AltSetter is a Device with alternate settings.
type AltSetter interface {
	SetAlt(ctx context.Context, alt int) error
}

// BulkDevice is a Device with bulk endpoints: OUT endpoints get data, IN
// endpoints fill it and return how much (ErrNotYet when there is nothing).
type BulkDevice interface {
	Bulk(ctx context.Context, ep uint8, data []byte) (int, error)
}

// libusb error codes the shim returns.
const (
	errIO       = -1
	errNoDevice = -4
	errTimeout  = -7
	errPipe     = -9
)

func code(err error) int32 {
	switch {
	case errors.Is(err, ErrStall):
		return errPipe
	case errors.Is(err, ErrNotYet):
		return errTimeout
	case errors.Is(err, flash.ErrNoDevice):
		return errNoDevice
	}
	return errIO
}

// Listen serves d on a Unix socket at path, one shim connection after
// another, until the returned stop is called.
func Listen(path string, d Device) (stop func(), err error) {
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
			_ = Serve(ctx, c, d)
			c.Close()
		}
	}()
	return func() { cancel(); l.Close(); <-done }, nil
}

// Serve answers one shim connection until it closes.
func Serve(ctx context.Context, rw io.ReadWriter, d Device) error {
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
			if a, ok := d.(AltSetter); ok {
				if err := a.SetAlt(ctx, int(m[1])); err != nil {
					rc = code(err)
				}
			} else if m[1] != 0 {
				rc = errPipe
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
				desc, ok := d.Descriptor(val)
				if !ok {
					rc = errPipe
				} else {
					rc = int32(copy(buf, desc))
				}
			} else {
				got, err := d.Control(ctx, rType, req, val, idx, buf)
				if err != nil {
					rc = code(err)
				} else {
					rc = int32(got)
				}
			}
			if rType&0x80 != 0 && rc > 0 {
				in = buf[:rc]
			}
		case 'B':
			var h [5]byte
			if _, err := io.ReadFull(rw, h[:]); err != nil {
				return err
			}
			ep, n := h[0], int(binary.LittleEndian.Uint32(h[1:]))
			if n < 0 || n > 1<<20 {
				return fmt.Errorf("usbshim: bulk transfer of %d bytes", n)
			}
			buf := make([]byte, n)
			if ep&0x80 == 0 && n > 0 {
				if _, err := io.ReadFull(rw, buf); err != nil {
					return err
				}
			}
			b, ok := d.(BulkDevice)
			if !ok {
				rc = errPipe
			} else if got, err := b.Bulk(ctx, ep, buf); err != nil {
				rc = code(err)
			} else {
				rc = int32(got)
			}
			if ep&0x80 != 0 && rc > 0 {
				in = buf[:rc]
			}
		default:
			return fmt.Errorf("usbshim: message %q", kind[0])
		}
		out := binary.LittleEndian.AppendUint32(nil, uint32(rc))
		if _, err := rw.Write(append(out, in...)); err != nil {
			return err
		}
	}
}

// String is a USB string descriptor for s.
func String(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := []byte{byte(2 + 2*len(u)), 3}
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// LangIDs is string descriptor 0: US English.
var LangIDs = []byte{4, 3, 0x09, 0x04}

package dfu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/gousb"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/usbport"
)

// usbConn is the gousb adapter: a Controller and AltSetter on a claimed DFU
// interface.
type usbConn struct {
	ctx   *gousb.Context
	dev   *gousb.Device
	cfg   *gousb.Config
	intf  *gousb.Interface
	iface int
}

// Control performs a control transfer. gousb has no context; the device's
// ControlTimeout bounds each transfer and ctx is checked before it.
func (c *usbConn) Control(ctx context.Context, rType, request uint8, val, idx uint16, data []byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.dev.Control(rType, request, val, idx, data)
	return n, usbErr(err)
}

func usbErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gousb.ErrorPipe):
		return fmt.Errorf("%v: %w", err, ErrStall)
	case errors.Is(err, gousb.ErrorNoDevice):
		return fmt.Errorf("%v: %w", err, flash.ErrNoDevice)
	case errors.Is(err, gousb.ErrorTimeout):
		return fmt.Errorf("%v: %w", err, flash.ErrNoAnswer)
	}
	return err
}

// SetAlt claims the DFU interface with alternate setting alt.
func (c *usbConn) SetAlt(ctx context.Context, alt int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.intf != nil {
		c.intf.Close()
		c.intf = nil
	}
	intf, err := c.cfg.Interface(c.iface, alt)
	if err != nil {
		return usbErr(err)
	}
	c.intf = intf
	return nil
}

func (c *usbConn) Close() error {
	if c.intf != nil {
		c.intf.Close()
	}
	var err error
	if c.cfg != nil {
		err = c.cfg.Close()
	}
	if c.dev != nil {
		if e := c.dev.Close(); err == nil {
			err = e
		}
	}
	if c.ctx != nil {
		if e := c.ctx.Close(); err == nil {
			err = e
		}
	}
	return err
}

// isDFU reports whether a device descriptor has a DFU interface in
// DFU mode (protocol 2) or in run-time mode (protocol 1).
func isDFU(desc *gousb.DeviceDesc, protocol gousb.Protocol) bool {
	for _, cfg := range desc.Configs {
		for _, in := range cfg.Interfaces {
			for _, a := range in.AltSettings {
				if a.Class == gousb.ClassApplication && a.SubClass == 1 && a.Protocol == protocol {
					return true
				}
			}
		}
	}
	return false
}

// Open finds the one USB device in DFU mode that port selects (see
// ParsePort), reads its descriptors and returns a Target on it; Close
// releases the device. No device is an error wrapping flash.ErrNoDevice;
// several are an error listing them.
func Open(ctx context.Context, port string) (*Target, error) {
	p, err := ParsePort(port)
	if err != nil {
		return nil, err
	}
	uctx, err := usbport.NewContext("dfu", "DFU device")
	if err != nil {
		return nil, err
	}
	var runtime []string
	devs, err := uctx.OpenDevices(func(desc *gousb.DeviceDesc) bool {
		if p.HasID && (uint16(desc.Vendor) != p.VID || uint16(desc.Product) != p.PID) {
			return false
		}
		if isDFU(desc, 2) {
			return true
		}
		if isDFU(desc, 1) {
			runtime = append(runtime, fmt.Sprintf("%s:%s", desc.Vendor, desc.Product))
		}
		return false
	})
	closeAll := func(ds []*gousb.Device) {
		for _, d := range ds {
			d.Close()
		}
	}
	if err != nil && len(devs) == 0 {
		uctx.Close()
		return nil, fmt.Errorf("dfu: no DFU device found: enumerating USB: %v: %w", err, flash.ErrNoDevice)
	}
	var found []Candidate
	for _, d := range devs {
		serial, _ := d.SerialNumber()
		found = append(found, Candidate{VID: uint16(d.Desc.Vendor), PID: uint16(d.Desc.Product), Serial: serial, Bus: d.Desc.Bus, Address: d.Desc.Address})
	}
	i, err := choose(p, found, runtime)
	if err != nil {
		closeAll(devs)
		uctx.Close()
		return nil, err
	}
	for j, d := range devs {
		if j != i {
			d.Close()
		}
	}
	dev := devs[i]
	dev.ControlTimeout = 5 * time.Second
	c := &usbConn{ctx: uctx, dev: dev}
	t, err := c.open(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	return t, nil
}

func (c *usbConn) open(ctx context.Context) (*Target, error) {
	dev := c.dev
	_ = dev.SetAutoDetach(true)
	num, err := dev.ActiveConfigNum()
	if err != nil {
		return nil, fmt.Errorf("dfu: %s: active configuration: %w", dev, usbErr(err))
	}
	raw := make([]byte, 1024)
	n, err := dev.Control(0x80, 0x06, 0x0200, 0, raw) // GET_DESCRIPTOR(CONFIGURATION, index 0)
	if err != nil {
		return nil, fmt.Errorf("dfu: %s: read configuration descriptor: %w", dev, usbErr(err))
	}
	di, err := parseConfig(raw[:n])
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, dev)
	}
	serial, _ := dev.SerialNumber()
	d := Descriptor{VID: uint16(dev.Desc.Vendor), PID: uint16(dev.Desc.Product), Serial: serial, Interface: di.Number,
		TransferSize: di.TransferSize, DFUVersion: di.Version, Attributes: di.Attributes}
	for i, alt := range di.Alts {
		if alt != i {
			return nil, fmt.Errorf("dfu: %v: alternate settings are not numbered 0..n", d)
		}
		name, err := dev.GetStringDescriptor(di.Strings[i])
		if err != nil {
			return nil, fmt.Errorf("dfu: %v: name of alt %d: %w", d, alt, usbErr(err))
		}
		d.Alts = append(d.Alts, name)
	}
	if c.cfg, err = dev.Config(num); err != nil {
		return nil, fmt.Errorf("dfu: %v: configuration %d: %w", d, num, usbErr(err))
	}
	c.iface = di.Number
	t, err := New(c, d)
	if err != nil {
		return nil, err
	}
	t.closer = c
	return t, nil
}

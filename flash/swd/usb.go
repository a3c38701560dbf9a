package swd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/gousb"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/usbport"
)

// usbProbe is a CMSIS-DAP v2 probe on USB: commands go out on the
// interface's first bulk OUT endpoint, answers come back on its bulk IN
// endpoint.
type usbProbe struct {
	ctx  *gousb.Context
	dev  *gousb.Device
	cfg  *gousb.Config
	intf *gousb.Interface
	out  *gousb.OutEndpoint
	in   *gousb.InEndpoint
	buf  []byte
}

// Command carries an ST-LINK command block, its data phase and its answer.
func (u *usbProbe) Command(ctx context.Context, cmd, out []byte, inLen int) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := u.out.WriteContext(ctx, cmd); err != nil {
		return nil, fmt.Errorf("swd: st-link command %02x %02x: %w", cmd[0], cmd[1], usbErr(err))
	}
	if len(out) > 0 {
		if _, err := u.out.WriteContext(ctx, out); err != nil {
			return nil, fmt.Errorf("swd: st-link data for %02x %02x: %w", cmd[0], cmd[1], usbErr(err))
		}
	}
	var got []byte
	for len(got) < inLen {
		buf := make([]byte, inLen-len(got))
		n, err := u.in.ReadContext(ctx, buf)
		if err != nil {
			return nil, fmt.Errorf("swd: st-link answer to %02x %02x: %w", cmd[0], cmd[1], usbErr(err))
		}
		got = append(got, buf[:n]...)
	}
	return got, nil
}

func (u *usbProbe) Exchange(ctx context.Context, cmd []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := u.out.WriteContext(ctx, cmd); err != nil {
		return nil, fmt.Errorf("swd: send command 0x%02x: %w", cmd[0], usbErr(err))
	}
	n, err := u.in.ReadContext(ctx, u.buf)
	if err != nil {
		return nil, fmt.Errorf("swd: answer to command 0x%02x: %w", cmd[0], usbErr(err))
	}
	return append([]byte(nil), u.buf[:n]...), nil
}

func usbErr(err error) error {
	switch {
	case errors.Is(err, gousb.ErrorNoDevice):
		return fmt.Errorf("%v: %w", err, flash.ErrNoDevice)
	case errors.Is(err, gousb.ErrorTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%v: %w", err, flash.ErrNoAnswer)
	}
	return err
}

func (u *usbProbe) Close() error {
	if u.intf != nil {
		u.intf.Close()
	}
	var err error
	if u.cfg != nil {
		err = u.cfg.Close()
	}
	if u.dev != nil {
		if e := u.dev.Close(); err == nil {
			err = e
		}
	}
	if u.ctx != nil {
		if e := u.ctx.Close(); err == nil {
			err = e
		}
	}
	return err
}

// dapInterface finds a vendor-class interface with a bulk OUT endpoint
// followed by a bulk IN endpoint: the shape of a CMSIS-DAP v2 interface.
func dapInterface(desc *gousb.DeviceDesc) (cfg, intf int, ok bool) {
	for _, c := range desc.Configs {
		for _, in := range c.Interfaces {
			for _, a := range in.AltSettings {
				if a.Class != gousb.ClassVendorSpec || a.Alternate != 0 {
					continue
				}
				var out, inp bool
				for _, e := range a.Endpoints {
					if e.TransferType == gousb.TransferTypeBulk {
						out = out || e.Direction == gousb.EndpointDirectionOut
						inp = inp || e.Direction == gousb.EndpointDirectionIn
					}
				}
				if out && inp {
					return c.Number, in.Number, true
				}
			}
		}
	}
	return 0, 0, false
}

func isSTLink(desc *gousb.DeviceDesc) bool {
	_, ok := stlinkPIDs[uint16(desc.Product)]
	return uint16(desc.Vendor) == 0x0483 && ok
}

// OpenUSB opens the board's chip behind the CMSIS-DAP v2 probe or ST-LINK that port
// selects ("swd:", "swd:VID:PID", either with ",serial=S"). No probe is an
// error wrapping flash.ErrNoDevice; several are listed with their serials.
func OpenUSB(ctx context.Context, port string, b *boards.Board, opts Options) (*Target, error) {
	p, err := usbport.Parse("swd", port)
	if err != nil {
		return nil, err
	}
	uctx, err := usbport.NewContext("swd", "SWD probe")
	if err != nil {
		return nil, err
	}
	devs, err := uctx.OpenDevices(func(desc *gousb.DeviceDesc) bool {
		_, _, ok := dapInterface(desc)
		return (ok || isSTLink(desc)) && (!p.HasID || (uint16(desc.Vendor) == p.VID && uint16(desc.Product) == p.PID))
	})
	if err != nil && len(devs) == 0 {
		uctx.Close()
		return nil, fmt.Errorf("swd: no SWD probe found: enumerating USB: %v: %w", err, flash.ErrNoDevice)
	}
	var found []usbport.Candidate
	var probes []*gousb.Device
	for _, d := range devs {
		if !isSTLink(d.Desc) {
			c, i, _ := dapInterface(d.Desc)
			name, _ := d.InterfaceDescription(c, i, 0)
			product, _ := d.Product()
			if !strings.Contains(name, "CMSIS-DAP") && !strings.Contains(product, "CMSIS-DAP") {
				d.Close()
				continue
			}
		}
		serial, _ := d.SerialNumber()
		found = append(found, usbport.Candidate{VID: uint16(d.Desc.Vendor), PID: uint16(d.Desc.Product), Serial: serial, Bus: d.Desc.Bus, Address: d.Desc.Address})
		probes = append(probes, d)
	}
	k, err := p.Choose(found, "SWD probe", "kiln speaks CMSIS-DAP v2 and ST-LINK/V2-1 and V3")
	for j, d := range probes {
		if j != k {
			d.Close()
		}
	}
	if err != nil {
		uctx.Close()
		return nil, err
	}
	u := &usbProbe{ctx: uctx, dev: probes[k]}
	c, i, _ := dapInterface(u.dev.Desc)
	_ = u.dev.SetAutoDetach(true)
	if u.cfg, err = u.dev.Config(c); err != nil {
		u.Close()
		return nil, fmt.Errorf("swd: %s: configuration %d: %w", found[k].Spec("swd"), c, usbErr(err))
	}
	if u.intf, err = u.cfg.Interface(i, 0); err != nil {
		u.Close()
		return nil, fmt.Errorf("swd: %s: claim interface %d: %w", found[k].Spec("swd"), i, usbErr(err))
	}
	// The command endpoints are the interface's lowest-numbered bulk OUT and
	// IN endpoints (CMSIS-DAP v2: EP1 OUT, EP2 IN, then SWO; ST-LINK/V2-1:
	// 0x01, 0x81, then trace 0x82).
	var outDesc, inDesc *gousb.EndpointDesc
	for _, e := range u.intf.Setting.Endpoints {
		if e.TransferType != gousb.TransferTypeBulk {
			continue
		}
		e := e
		if e.Direction == gousb.EndpointDirectionOut && (outDesc == nil || e.Number < outDesc.Number) {
			outDesc = &e
		}
		if e.Direction == gousb.EndpointDirectionIn && (inDesc == nil || e.Number < inDesc.Number) {
			inDesc = &e
		}
	}
	if u.out, err = u.intf.OutEndpoint(outDesc.Number); err == nil {
		u.in, err = u.intf.InEndpoint(inDesc.Number)
	}
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("swd: %s: endpoints: %w", found[k].Spec("swd"), usbErr(err))
	}
	mps := max(64, inDesc.MaxPacketSize)
	u.buf = make([]byte, max(mps, 1024))
	var t *Target
	if isSTLink(u.dev.Desc) {
		t, err = OpenSTLink(ctx, u, stlinkPIDs[uint16(u.dev.Desc.Product)], found[k].Serial, b, opts)
	} else {
		t, err = Open(ctx, u, b, opts)
	}
	if err != nil {
		u.Close()
		return nil, err
	}
	t.closer = u.Close
	return t, nil
}

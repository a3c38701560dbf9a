package op

import (
	"bytes"
	"context"
	"fmt"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
)

// Provisioning is a provisioning job's device work (kiln station): the
// artifact (already loaded and through the trust gate) and, once the
// device is open and has said who it is, the per-device record to write
// beside it.
type Provisioning struct {
	Board    *boards.Board
	Firmware *flash.Image
	// Record returns the record image for the device that answered with
	// identity (the station reserves a serial number and makes keys here).
	Record func(identity string) (*flash.Image, error)
	// Phase is told each step as it starts: open, record, write, verify
	// firmware, verify record. It may be nil.
	Phase func(string)
}

// Provisioned is what Provision proved.
type Provisioned struct {
	Device   string
	Firmware flash.Result
	// Record is the record region as read back from the device.
	Record []byte
}

// Provision opens the device at req.Port through the back-end table,
// writes the firmware and the device's record in one session and proves
// both: the firmware by its hash read back, the record byte for byte. A
// difference wraps flash.ErrVerify.
func Provision(ctx context.Context, req Request, p Provisioning) (*Provisioned, error) {
	phase := func(s string) {
		if p.Phase != nil {
			p.Phase(s)
		}
	}
	out := &Provisioned{}
	phase("open")
	be, err := device.Resolve(req.Port, p.Board, req.Protocol)
	if err != nil {
		return out, err
	}
	open := req.Open
	if open == nil {
		open = device.Open
	}
	sess, err := open(ctx, req.Port, p.Board, be.Protocol, req.Device)
	if err != nil {
		return out, err
	}
	defer sess.Close()
	out.Device = sess.Identity()
	phase("record")
	rec, err := p.Record(out.Device)
	if err != nil {
		return out, err
	}
	whole, err := flash.NewImage(p.Firmware.Source, append(append([]flash.Segment(nil), p.Firmware.Segments...), rec.Segments...)...)
	if err != nil {
		return out, err
	}
	phase("write")
	if err := sess.Write(ctx, whole, req.Progress); err != nil {
		return out, err
	}
	phase("verify firmware")
	if out.Firmware, err = flash.Verify(ctx, sess, p.Firmware, req.Progress); err != nil {
		return out, err
	}
	phase("verify record")
	r := rec.Extent()
	req.Progress.Report("verify record", 0, int64(r.Size))
	got, err := flash.ReadImage(ctx, sess, []flash.Region{r}, nil)
	if err != nil {
		return out, fmt.Errorf("read back record: %w", err)
	}
	_, want := rec.Flat(0xff)
	out.Record = got.Segments[0].Data
	if !bytes.Equal(out.Record, want) {
		return out, fmt.Errorf("provision record at 0x%x: %w", r.Addr, flash.ErrVerify)
	}
	return out, nil
}

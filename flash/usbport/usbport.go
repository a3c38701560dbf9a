// Package usbport selects one USB device by a port spec, the same way for
// every USB back end: "SCHEME:" (the only device of its kind present),
// "SCHEME:VID:PID", and either followed by ",serial=S" — dfu:0483:df11,
// swd:0d28:0204,serial=0240000032044e45.
package usbport

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/google/gousb"

	"kiln.dev/kiln/flash"
)

// Port is a parsed port spec.
type Port struct {
	Scheme   string // "dfu", "swd"
	VID, PID uint16
	HasID    bool // VID and PID were given
	Serial   string
}

// Parse reads a port spec of scheme.
func Parse(scheme, s string) (Port, error) {
	p := Port{Scheme: scheme}
	rest, ok := strings.CutPrefix(s, scheme+":")
	if !ok {
		return p, fmt.Errorf("%s: port %q does not start with \"%s:\"", scheme, s, scheme)
	}
	id, opts, _ := strings.Cut(rest, ",")
	if id != "" {
		v, q, ok := strings.Cut(id, ":")
		vid, err1 := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 16)
		pid, err2 := strconv.ParseUint(strings.TrimPrefix(q, "0x"), 16, 16)
		if !ok || err1 != nil || err2 != nil {
			return p, fmt.Errorf("%s: port %q: want %s:VID:PID in hex, like %s:0483:df11", scheme, s, scheme, scheme)
		}
		p.VID, p.PID, p.HasID = uint16(vid), uint16(pid), true
	}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			k, v, _ := strings.Cut(o, "=")
			if k != "serial" || v == "" {
				return p, fmt.Errorf("%s: port %q: unknown option %q (want serial=S)", scheme, s, o)
			}
			p.Serial = v
		}
	}
	return p, nil
}

// String spells the port as Parse reads it.
func (p Port) String() string {
	s := p.Scheme + ":"
	if p.HasID {
		s += fmt.Sprintf("%04x:%04x", p.VID, p.PID)
	}
	if p.Serial != "" {
		s += ",serial=" + p.Serial
	}
	return s
}

// Match reports whether a device with these IDs and serial number is one
// the port selects.
func (p Port) Match(vid, pid uint16, serial string) bool {
	return (!p.HasID || (p.VID == vid && p.PID == pid)) && (p.Serial == "" || p.Serial == serial)
}

// Candidate is a device of the port's kind found on the bus.
type Candidate struct {
	VID, PID     uint16
	Serial       string
	Bus, Address int
}

// Spec is the port spec that selects c alone, with where it sits.
func (c Candidate) Spec(scheme string) string {
	return fmt.Sprintf("%s:%04x:%04x,serial=%s (bus %d address %d)", scheme, c.VID, c.PID, c.Serial, c.Bus, c.Address)
}

// Choose picks the one candidate the port selects. kind names the devices
// for messages ("DFU device"); why may explain an empty bus. None is an
// error wrapping flash.ErrNoDevice; several are an error listing them with
// the spec that picks each.
func (p Port) Choose(found []Candidate, kind, why string) (int, error) {
	var idx []int
	for i, c := range found {
		if p.Match(c.VID, c.PID, c.Serial) {
			idx = append(idx, i)
		}
	}
	switch len(idx) {
	case 1:
		return idx[0], nil
	case 0:
		where := "on USB"
		if p.HasID || p.Serial != "" {
			where = "matching " + strings.TrimPrefix(p.String(), p.Scheme+":")
		}
		if why != "" {
			why = " (" + why + ")"
		}
		return -1, fmt.Errorf("%s: no %s found %s%s: %w", p.Scheme, kind, where, why, flash.ErrNoDevice)
	}
	names := make([]string, len(idx))
	for k, i := range idx {
		names[k] = found[i].Spec(p.Scheme)
	}
	sort.Strings(names)
	return -1, fmt.Errorf("%s: %d %ss match %s: %s; choose one with --port %s:VID:PID,serial=S", p.Scheme, len(idx), kind, p, strings.Join(names, ", "), p.Scheme)
}

// NewContext starts libusb; a libusb that cannot start (no USB subsystem)
// means no device, said as an error wrapping flash.ErrNoDevice.
func NewContext(scheme, kind string) (c *gousb.Context, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: no %s found: libusb: %v: %w", scheme, kind, r, flash.ErrNoDevice)
		}
	}()
	return gousb.NewContext(), nil
}

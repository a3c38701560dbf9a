package dfu

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"kiln.dev/kiln/flash"
)

// Port selects a USB DFU device: "dfu:" (the only DFU device present),
// "dfu:VID:PID", and either followed by ",serial=S".
type Port struct {
	VID, PID uint16
	HasID    bool // VID and PID were given
	Serial   string
}

// ParsePort reads a dfu: port.
func ParsePort(s string) (Port, error) {
	var p Port
	rest, ok := strings.CutPrefix(s, "dfu:")
	if !ok {
		return p, fmt.Errorf("dfu: port %q does not start with \"dfu:\"", s)
	}
	id, opts, _ := strings.Cut(rest, ",")
	if id != "" {
		v, q, ok := strings.Cut(id, ":")
		vid, err1 := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 16)
		pid, err2 := strconv.ParseUint(strings.TrimPrefix(q, "0x"), 16, 16)
		if !ok || err1 != nil || err2 != nil {
			return p, fmt.Errorf("dfu: port %q: want dfu:VID:PID in hex, like dfu:0483:df11", s)
		}
		p.VID, p.PID, p.HasID = uint16(vid), uint16(pid), true
	}
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			k, v, _ := strings.Cut(o, "=")
			if k != "serial" || v == "" {
				return p, fmt.Errorf("dfu: port %q: unknown option %q (want serial=S)", s, o)
			}
			p.Serial = v
		}
	}
	return p, nil
}

// String spells the port as ParsePort reads it.
func (p Port) String() string {
	s := "dfu:"
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

// Candidate is a USB device in DFU mode found on the bus.
type Candidate struct {
	VID, PID     uint16
	Serial       string
	Bus, Address int
}

func (c Candidate) String() string {
	return fmt.Sprintf("dfu:%04x:%04x,serial=%s (bus %d address %d)", c.VID, c.PID, c.Serial, c.Bus, c.Address)
}

// Choose picks the one candidate the port selects. None is an error
// wrapping flash.ErrNoDevice (runtime names devices seen in DFU run-time
// mode, for the message); several are an error listing them.
func (p Port) Choose(found []Candidate, runtime []string) (int, error) {
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
		why := ""
		if len(runtime) > 0 {
			why = fmt.Sprintf(" (%s in run-time mode: start the bootloader, e.g. with BOOT0 high)", strings.Join(runtime, ", "))
		}
		where := "on USB"
		if p != (Port{}) {
			where = "matching " + strings.TrimPrefix(p.String(), "dfu:")
		}
		return -1, fmt.Errorf("dfu: no DFU device found %s%s: %w", where, why, flash.ErrNoDevice)
	}
	names := make([]string, len(idx))
	for k, i := range idx {
		names[k] = found[i].String()
	}
	sort.Strings(names)
	return -1, fmt.Errorf("dfu: %d DFU devices match %s: %s; choose one with --port dfu:VID:PID,serial=S", len(idx), p, strings.Join(names, ", "))
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

package station

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"go.bug.st/serial/enumerator"

	"kiln.dev/kiln/boards"
)

// plug is a port with a board on it. Key changes when the board is
// replaced: a new device node, a new link, a new USB serial number.
type plug struct {
	Port   string // what device.Open is given
	Key    string
	Target int // index into Config.Targets
}

// ListPorts lists serial ports with their USB details.
type ListPorts func() ([]*enumerator.PortDetails, error)

// scan finds the ports with a board on them now. Errors of one source
// (a bad glob, a failing USB enumeration) are returned with what the other
// sources found.
func scan(cfg *Config, bs []*boards.Board, list ListPorts) (map[string]plug, error) {
	found := map[string]plug{}
	var firstErr error
	add := func(port, key string, t int) {
		if _, dup := found[port]; !dup {
			found[port] = plug{Port: port, Key: key, Target: t}
		}
	}
	var usb []*enumerator.PortDetails
	usbListed := false
	for ti, t := range cfg.Targets {
		for _, p := range t.Ports {
			if strings.HasPrefix(p, "emu:") {
				add(p, "emulator", ti) // always there; one job a run
				continue
			}
			if k, ok := nodeKey(p); ok {
				add(p, k, ti)
			}
		}
		for _, pat := range t.Watch {
			ms, err := filepath.Glob(pat)
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("station: watch %q: %w", pat, err)
			}
			sort.Strings(ms)
			for _, p := range ms {
				if k, ok := nodeKey(p); ok {
					add(p, k, ti)
				}
			}
		}
		if t.USB && list != nil {
			if !usbListed {
				var err error
				usb, err = list()
				usbListed = true
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("station: list USB serial ports: %w", err)
				}
			}
			ids, _ := bs[ti].USBIDs()
			for _, d := range usb {
				if d == nil || !d.IsUSB || !matchID(d, ids) {
					continue
				}
				if k, ok := nodeKey(d.Name); ok {
					add(d.Name, k+"/"+d.SerialNumber, ti)
				}
			}
		}
	}
	return found, firstErr
}

func matchID(d *enumerator.PortDetails, ids [][2]uint16) bool {
	for _, id := range ids {
		if strings.EqualFold(d.VID, fmt.Sprintf("%04x", id[0])) && strings.EqualFold(d.PID, fmt.Sprintf("%04x", id[1])) {
			return true
		}
	}
	return false
}

// nodeKey identifies what is at path now: the link itself (a re-created
// link is a new board) and the node it leads to. ok is false when nothing
// is there (or a link leads nowhere).
func nodeKey(path string) (string, bool) {
	var st, lst syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", false
	}
	if err := syscall.Lstat(path, &lst); err != nil {
		return "", false
	}
	target, _ := os.Readlink(path)
	return fmt.Sprintf("%d:%d:%x:%s", lst.Ino, st.Ino, st.Rdev, target), true
}

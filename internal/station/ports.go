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
	Node   string // nodeKey of Port when found ("" for emulators)
	Target int    // index into Config.Targets
}

// ListPorts lists serial ports with their USB details.
type ListPorts func() ([]*enumerator.PortDetails, error)

// scan finds the ports with a board on them now. Errors of one source
// (a bad glob, a failing USB enumeration) are returned with what the other
// sources found.
func scan(cfg *Config, bs []*boards.Board, list ListPorts) (map[string]plug, error) {
	found := map[string]plug{}
	nodes := map[string]bool{} // one job per device, however many names lead to it
	var firstErr error
	add := func(port, node, key string, t int) {
		if _, dup := found[port]; dup {
			return
		}
		if id, _, _ := strings.Cut(node, "/"); node != "" {
			if nodes[id] {
				return
			}
			nodes[id] = true
		}
		found[port] = plug{Port: port, Key: key, Node: node, Target: t}
	}
	var usb []*enumerator.PortDetails
	usbListed := false
	for ti, t := range cfg.Targets {
		for _, p := range t.Ports {
			if strings.HasPrefix(p, "emu:") {
				add(p, "", "emulator", ti) // always there; one job a run
				continue
			}
			if k, ok := nodeKey(p); ok {
				add(p, k, k, ti)
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
					add(p, k, k, ti)
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
					add(d.Name, k, k+" usb:"+d.SerialNumber, ti)
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

// nodeKey identifies what is at path now: the node it leads to and, for a
// link, the link itself (a re-created link is a new board). A device node
// removed and made again with the same inode between two polls looks
// unchanged; udev's nodes get new inodes. ok is false when nothing is
// there, a link leads nowhere, or the path changed while it was looked at
// (a torn look would pass for a new board).
func nodeKey(path string) (string, bool) {
	t1, e1 := os.Readlink(path)
	var st, lst syscall.Stat_t
	if err := syscall.Lstat(path, &lst); err != nil {
		return "", false
	}
	if err := syscall.Stat(path, &st); err != nil {
		return "", false
	}
	t2, e2 := os.Readlink(path)
	isLink := lst.Mode&syscall.S_IFMT == syscall.S_IFLNK
	if (e1 == nil) != isLink || (e2 == nil) != isLink || t1 != t2 {
		return "", false
	}
	k := fmt.Sprintf("%d:%d:%x/", st.Dev, st.Ino, st.Rdev)
	if isLink {
		// A link made again is a new board even when the inode number and
		// the node it names are reused (ptys are): its change time differs.
		k += fmt.Sprintf(":%d:%d.%09d:%s", lst.Ino, lst.Ctim.Sec, lst.Ctim.Nsec, t1)
	}
	return k, true
}

package swdtest

import (
	"encoding/binary"
	"sync"

	"kiln.dev/kiln/flash/internal/usbshim"
)

// usbFace is what a probe model shows on USB: its IDs, device class,
// configuration descriptor and strings 1, 2, 3, ... (manufacturer,
// product, serial, interface).
type usbFace struct {
	vid, pid uint16
	class    [3]byte
	config   []byte
	strings  []string
}

// descriptor answers GET_DESCRIPTOR(val).
func (f usbFace) descriptor(val uint16) ([]byte, bool) {
	switch val >> 8 {
	case 1:
		b := []byte{18, 1, 0x00, 0x02, f.class[0], f.class[1], f.class[2], 64}
		b = binary.LittleEndian.AppendUint16(b, f.vid)
		b = binary.LittleEndian.AppendUint16(b, f.pid)
		b = binary.LittleEndian.AppendUint16(b, 0x0100)
		return append(b, 1, 2, 3, 1), true
	case 2:
		return f.config, true
	case 3:
		i := int(val & 0xff)
		if i == 0 {
			return usbshim.LangIDs, true
		}
		if i <= len(f.strings) {
			return usbshim.String(f.strings[i-1]), true
		}
	}
	return nil, false
}

// control accepts SET_CONFIGURATION and stalls everything else: neither
// probe has class or vendor control requests.
func control(rType, req uint8) (int, error) {
	if rType&0x60 == 0 && req == 9 {
		return 0, nil
	}
	return 0, usbshim.ErrStall
}

// answers queues a probe's answers for its bulk IN endpoint.
type answers struct {
	mu sync.Mutex
	q  [][]byte
}

func (a *answers) push(b []byte) {
	a.mu.Lock()
	a.q = append(a.q, b)
	a.mu.Unlock()
}

// pop hands out the oldest answer (what fits in buf; the rest stays for the
// next read), or usbshim.ErrNotYet.
func (a *answers) pop(buf []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.q) == 0 {
		return 0, usbshim.ErrNotYet
	}
	n := copy(buf, a.q[0])
	if n < len(a.q[0]) {
		a.q[0] = a.q[0][n:]
	} else {
		a.q = a.q[1:]
	}
	return n, nil
}

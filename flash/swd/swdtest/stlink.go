package swdtest

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/usbshim"
)

// STLink is an ST-LINK/V2-1 model (firmware V2J37) in front of a Chip: the
// probe's own command set, whose firmware does the ADIv5 work (line reset,
// SELECT, CSW, TAR, DRW) that a CMSIS-DAP host does itself. It shares the
// CMSIS-DAP model's chip access and fault injection.
type STLink struct {
	P *Probe

	mu      sync.Mutex
	mode    byte
	last    byte // status of the last memory command
	pending []byte
	out     answers
	wantOut int    // bytes of a data phase still to come over USB
	outCmd  []byte // the command that data phase belongs to
}

// NewSTLink puts an ST-LINK in front of chip.
func NewSTLink(chip *Chip, serial string) *STLink {
	return &STLink{P: NewProbe(chip, serial), mode: 1, last: 0x80}
}

// ST-LINK status bytes.
const (
	stOK      = 0x80
	stFault   = 0x81
	stAPWait  = 0x10
	stAPFault = 0x11
	stAPError = 0x12
)

func ackStatus(ack int) byte {
	switch ack {
	case AckOK:
		return stOK
	case AckWait:
		return stAPWait
	case AckFault:
		return stAPFault
	}
	return stAPError
}

// Command carries out one command block with its data phase.
func (s *STLink) Command(ctx context.Context, cmd, out []byte, inLen int) ([]byte, error) {
	resp, err := s.P.carry(ctx, func() []byte { return s.run(cmd, out) })
	if err != nil {
		return nil, err
	}
	if len(resp) > inLen {
		resp = resp[:inLen]
	}
	return resp, nil
}

func (s *STLink) run(cmd, out []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cmd) < 16 {
		return nil
	}
	switch cmd[0] {
	case 0xF1: // GET_VERSION: V2, J37, M26; VID, PID
		r := binary.BigEndian.AppendUint16(nil, 2<<12|37<<6|26)
		r = binary.LittleEndian.AppendUint16(r, 0x0483)
		return binary.LittleEndian.AppendUint16(r, 0x374B)
	case 0xF5:
		return []byte{s.mode, 0}
	case 0xF3:
		if cmd[1] == 0x07 {
			s.mode = 1
		}
		return nil
	case 0xF7: // target voltage: factor, reading (3.3 V)
		r := binary.LittleEndian.AppendUint32(nil, 1489)
		return binary.LittleEndian.AppendUint32(r, 2047)
	case 0xF2:
		return s.debug(cmd[1:], out)
	}
	return []byte{stFault, 0}
}

// ap runs one register access through the probe model (WAIT retries,
// injected faults).
func (s *STLink) ap(ap, read bool, addr uint8, v uint32) (uint32, int) {
	req := byte(addr & 0x0C)
	if ap {
		req |= 1
	}
	if read {
		req |= 2
	}
	return s.P.access(req, v)
}

// mem performs size-bit accesses from addr: reads fill n units, writes
// take data.
func (s *STLink) mem(read bool, addr uint32, size int, n int, data []byte) ([]byte, byte) {
	csw := uint32(0xA2000000 | 1<<4 | 2)
	if size == 16 {
		csw = 0xA2000000 | 1<<4 | 1
	}
	for _, w := range []struct {
		ap   bool
		addr uint8
		v    uint32
	}{{false, 0x8, 0}, {true, 0x0, csw}, {true, 0x4, addr}} {
		if _, ack := s.ap(w.ap, false, w.addr, w.v); ack != AckOK {
			return nil, ackStatus(ack)
		}
	}
	u := size / 8
	var outb []byte
	for i := 0; i < n; i++ {
		if a := addr + uint32(i*u); i > 0 && a%1024 == 0 {
			// The firmware rewrites TAR at each 1 KiB: auto-increment
			// is only guaranteed within one.
			if _, ack := s.ap(true, false, 0x4, a); ack != AckOK {
				return outb, ackStatus(ack)
			}
		}
		if read {
			v, ack := s.ap(true, true, 0xC, 0)
			if ack != AckOK {
				return outb, ackStatus(ack)
			}
			lane := 8 * ((addr + uint32(i*u)) & 3)
			for k := 0; k < u; k++ {
				outb = append(outb, byte(v>>(lane+8*uint32(k))))
			}
			continue
		}
		var v uint32
		for k := 0; k < u; k++ {
			v |= uint32(data[i*u+k]) << (8 * k)
		}
		v <<= 8 * ((addr + uint32(i*u)) & 3)
		if _, ack := s.ap(true, false, 0xC, v); ack != AckOK {
			return nil, ackStatus(ack)
		}
	}
	// Writes are posted: a bus error shows in CTRL/STAT's STICKYERR.
	if ctrl, _ := s.ap(false, true, 0x4, 0); ctrl&(1<<5) != 0 {
		s.ap(false, false, 0x0, 0x1E)
		return outb, stAPFault
	}
	return outb, stOK
}

func (s *STLink) debug(c, out []byte) []byte {
	status := func(st byte) []byte { return []byte{st, 0} }
	u32 := func(i int) uint32 { return binary.LittleEndian.Uint32(c[i:]) }
	if s.mode != 2 && c[0] != 0x30 {
		return status(stFault)
	}
	switch c[0] {
	case 0x30: // ENTER, 0xA3 = SWD
		if c[1] != 0xA3 {
			return status(stFault)
		}
		s.P.Chip.LineReset()
		if _, ack := s.ap(false, true, 0x0, 0); ack != AckOK {
			return status(stAPError)
		}
		s.ap(false, false, 0x0, 0x1E)
		s.ap(false, false, 0x4, 1<<28|1<<30)
		s.mode = 2
		return status(stOK)
	case 0x21:
		s.mode = 1
		return nil
	case 0x31:
		id, ack := s.ap(false, true, 0x0, 0)
		r := []byte{ackStatus(ack), 0, 0, 0}
		r = binary.LittleEndian.AppendUint32(r, id)
		return append(r, 0, 0, 0, 0)
	case 0x43, 0x32: // SWD_SET_FREQ, RESETSYS
		return status(stOK)
	case 0x36: // READDEBUGREG
		b, st := s.mem(true, u32(1), 32, 1, nil)
		r := []byte{st, 0, 0, 0}
		if len(b) < 4 {
			b = make([]byte, 4)
		}
		return append(r, b...)
	case 0x35: // WRITEDEBUGREG
		_, st := s.mem(false, u32(1), 32, 1, c[5:9])
		return status(st)
	case 0x07, 0x47: // READMEM_32, READMEM_16
		size := 32
		if c[0] == 0x47 {
			size = 16
		}
		n := int(binary.LittleEndian.Uint16(c[5:]))
		b, st := s.mem(true, u32(1), size, n/(size/8), nil)
		s.last = st
		for len(b) < n {
			b = append(b, 0)
		}
		return b
	case 0x08, 0x48: // WRITEMEM_32, WRITEMEM_16
		size := 32
		if c[0] == 0x48 {
			size = 16
		}
		n := min(int(binary.LittleEndian.Uint16(c[5:])), len(out))
		_, st := s.mem(false, u32(1), size, n/(size/8), out[:n])
		s.last = st
		return nil
	case 0x33: // READREG: through DCRSR and DCRDR, as the firmware does
		v, st := s.readReg(uint32(c[1]))
		return binary.LittleEndian.AppendUint32([]byte{st, 0, 0, 0}, v)
	case 0x34: // WRITEREG
		return status(s.writeReg(uint32(c[1]), u32(2)))
	case 0x3A: // READALLREGS: r0-r15, xPSR, MSP, PSP, and two words of control registers
		r := []byte{stOK, 0, 0, 0}
		for i := uint32(0); i < 21; i++ {
			v, st := s.readReg(i)
			if st != stOK {
				r[0] = st
			}
			r = binary.LittleEndian.AppendUint32(r, v)
		}
		return r
	case 0x02: // FORCEDEBUG
		_, st := s.mem(false, 0xE000EDF0, 32, 1, []byte{3, 0, 0x5f, 0xa0})
		return status(st)
	case 0x01: // STATUS: 0x80 running, 0x81 halted
		b, st := s.mem(true, 0xE000EDF0, 32, 1, nil)
		if st != stOK {
			return status(st)
		}
		if binary.LittleEndian.Uint32(b)&(1<<17) != 0 {
			return status(0x81)
		}
		return status(0x80)
	case 0x3E, 0x3B: // GETLASTRWSTATUS2, GETLASTRWSTATUS
		r := make([]byte, 12)
		r[0] = s.last
		s.last = stOK
		return r
	}
	return status(stFault)
}

// Descriptor answers GET_DESCRIPTOR for the ST-LINK/V2-1 as USB shows it:
// 0483:374b, one vendor interface with bulk OUT 0x01, IN 0x81 and the trace
// endpoint IN 0x82.
func (s *STLink) Descriptor(val uint16) ([]byte, bool) {
	return usbFace{vid: 0x0483, pid: 0x374B,
		config: []byte{9, 2, 39, 0, 1, 1, 0, 0x80, 0x32,
			9, 4, 0, 0, 3, 0xff, 0xff, 0xff, 4,
			7, 5, 0x01, 2, 64, 0, 0,
			7, 5, 0x81, 2, 64, 0, 0,
			7, 5, 0x82, 2, 64, 0, 0},
		strings: []string{"STMicroelectronics", "STM32 STLink", s.P.Serial, "ST-Link Debug"}}.descriptor(val)
}

// Control accepts SET_CONFIGURATION and stalls everything else.
func (s *STLink) Control(ctx context.Context, rType, req uint8, val, idx uint16, data []byte) (int, error) {
	return control(rType, req)
}

// Bulk takes command blocks and data phases on EP 0x01 and hands answers
// out on EP 0x81, as the probe's firmware does.
func (s *STLink) Bulk(ctx context.Context, ep uint8, data []byte) (int, error) {
	switch ep {
	case 0x01:
		s.mu.Lock()
		if s.wantOut > 0 {
			s.pending = append(s.pending, data...)
			s.wantOut -= len(data)
			if s.wantOut > 0 {
				s.mu.Unlock()
				return len(data), nil
			}
			cmd, out := s.outCmd, s.pending
			s.pending, s.outCmd, s.wantOut = nil, nil, 0
			s.mu.Unlock()
			if _, err := s.Command(ctx, cmd, out, 0); err != nil && errors.Is(err, flash.ErrNoDevice) {
				return 0, err
			}
			return len(data), nil
		}
		cmd := append([]byte(nil), data...)
		if len(cmd) < 16 {
			cmd = append(cmd, make([]byte, 16-len(cmd))...)
		}
		if cmd[0] == 0xF2 && (cmd[1] == 0x08 || cmd[1] == 0x48 || cmd[1] == 0x0D) {
			if n := int(binary.LittleEndian.Uint16(cmd[6:])); n > 0 {
				s.outCmd, s.wantOut = cmd, n
				s.mu.Unlock()
				return len(data), nil
			}
		}
		s.mu.Unlock()
		resp, err := s.Command(ctx, cmd, nil, 1<<16)
		if errors.Is(err, flash.ErrNoDevice) {
			return 0, err
		}
		if err == nil && len(resp) > 0 {
			s.out.push(resp)
		}
		return len(data), nil
	case 0x81:
		return s.out.pop(data)
	}
	return 0, usbshim.ErrStall
}

func (s *STLink) readReg(n uint32) (uint32, byte) {
	if _, st := s.mem(false, 0xE000EDF4, 32, 1, binary.LittleEndian.AppendUint32(nil, n)); st != stOK {
		return 0, st
	}
	b, st := s.mem(true, 0xE000EDF8, 32, 1, nil)
	if st != stOK {
		return 0, st
	}
	return binary.LittleEndian.Uint32(b), stOK
}

func (s *STLink) writeReg(n, v uint32) byte {
	if _, st := s.mem(false, 0xE000EDF8, 32, 1, binary.LittleEndian.AppendUint32(nil, v)); st != stOK {
		return st
	}
	_, st := s.mem(false, 0xE000EDF4, 32, 1, binary.LittleEndian.AppendUint32(nil, n|1<<16))
	return st
}

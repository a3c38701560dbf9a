package swd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// STLinkTransport carries one ST-LINK command: a 16-byte command block, an
// optional data phase to the probe (out), and an answer of inLen bytes.
type STLinkTransport interface {
	Command(ctx context.Context, cmd, out []byte, inLen int) ([]byte, error)
}

// ST-LINK commands (OpenOCD's stlink_usb.c; ST's firmware protocol).
const (
	stGetVersion = 0xF1
	stDebug      = 0xF2
	stDFU        = 0xF3
	stGetMode    = 0xF5

	stDFUExit = 0x07

	stModeDFU   = 0x00
	stModeMass  = 0x01
	stModeDebug = 0x02

	stEnter         = 0x30
	stEnterSWD      = 0xA3
	stExit          = 0x21
	stReadIDCodes   = 0x31
	stWriteDebugReg = 0x35
	stReadDebugReg  = 0x36
	stLastRW2       = 0x3E
	stSetFreq       = 0x43
	stReadMem32     = 0x07
	stWriteMem32    = 0x08
	stReadMem16     = 0x47
	stWriteMem16    = 0x48

	stOK = 0x80
)

// ST-LINK USB IDs: V2, V2-1, V2-1 without mass storage, V3 variants.
var stlinkPIDs = map[uint16]string{0x3748: "ST-LINK/V2", 0x374B: "ST-LINK/V2-1", 0x3752: "ST-LINK/V2-1", 0x374E: "ST-LINK/V3E",
	0x374F: "ST-LINK/V3", 0x3753: "ST-LINK/V3", 0x3754: "ST-LINK/V3"}

// stStatus turns an ST-LINK status byte into kiln's SWD sentinels.
func stStatus(what string, s byte) error {
	var err error
	switch s {
	case stOK:
		return nil
	case 0x10, 0x14:
		err = ErrWait
	case 0x11, 0x15, 0x18, 0x19, 0x1A, 0x81:
		err = ErrFault
	case 0x12, 0x16:
		err = ErrNoAck
	case 0x13, 0x17:
		err = ErrParity
	default:
		err = ErrProtocol
	}
	return fmt.Errorf("swd: st-link %s: status 0x%02x: %w", what, s, err)
}

// stlink reaches a target's memory through an ST-LINK's own memory
// commands: the probe's firmware does the ADIv5 work.
type stlink struct {
	t    STLinkTransport
	jtag int // firmware's JTAG/SWD API version
}

var _ link = (*stlink)(nil)

func (s *stlink) cmd(ctx context.Context, b []byte, out []byte, inLen int) ([]byte, error) {
	var c [16]byte
	copy(c[:], b)
	resp, err := s.t.Command(ctx, c[:], out, inLen)
	if err != nil {
		return nil, err
	}
	if len(resp) < inLen {
		return nil, fmt.Errorf("swd: st-link command %02x %02x: %d of %d bytes: %w", b[0], at(b, 1), len(resp), inLen, ErrProtocol)
	}
	return resp, nil
}

func at(b []byte, i int) byte {
	if i < len(b) {
		return b[i]
	}
	return 0
}

// version reads the firmware version and refuses one too old for 16-bit
// memory access (needed to program an F1).
func (s *stlink) version(ctx context.Context) (string, error) {
	r, err := s.cmd(ctx, []byte{stGetVersion}, nil, 6)
	if err != nil {
		return "", err
	}
	v := binary.BigEndian.Uint16(r)
	s.jtag = int(v>>6) & 0x3f
	if v>>12 < 2 || s.jtag < 26 {
		return "", fmt.Errorf("swd: ST-LINK firmware V%dJ%d is too old (J26 or later is needed): update it with ST's ST-LINK upgrade tool: %w", v>>12, s.jtag, ErrProtocol)
	}
	return fmt.Sprintf("V%dJ%d", v>>12, s.jtag), nil
}

func (s *stlink) connect(ctx context.Context) error {
	r, err := s.cmd(ctx, []byte{stGetMode}, nil, 2)
	if err != nil {
		return err
	}
	switch r[0] {
	case stModeDFU:
		if _, err := s.cmd(ctx, []byte{stDFU, stDFUExit}, nil, 0); err != nil {
			return err
		}
	case stModeDebug:
		if _, err := s.cmd(ctx, []byte{stDebug, stExit}, nil, 0); err != nil {
			return err
		}
	}
	if r, err = s.cmd(ctx, []byte{stDebug, stEnter, stEnterSWD}, nil, 2); err != nil {
		return err
	}
	if err := stStatus("enter SWD", r[0]); err != nil {
		return err
	}
	if r, err = s.cmd(ctx, []byte{stDebug, stReadIDCodes}, nil, 12); err != nil {
		return err
	}
	return stStatus("read DPIDR", r[0])
}

func (s *stlink) read32(ctx context.Context, addr uint32) (uint32, error) {
	var v uint32
	err := s.retry(ctx, func() error {
		c := []byte{stDebug, stReadDebugReg, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(c[2:], addr)
		r, err := s.cmd(ctx, c, nil, 8)
		if err != nil {
			return err
		}
		v = binary.LittleEndian.Uint32(r[4:])
		return stStatus(fmt.Sprintf("read 0x%08x", addr), r[0])
	})
	return v, err
}

func (s *stlink) write32(ctx context.Context, addr, v uint32) error {
	return s.retry(ctx, func() error {
		c := []byte{stDebug, stWriteDebugReg, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(c[2:], addr)
		binary.LittleEndian.PutUint32(c[6:], v)
		r, err := s.cmd(ctx, c, nil, 2)
		if err != nil {
			return err
		}
		return stStatus(fmt.Sprintf("write 0x%08x", addr), r[0])
	})
}

// lastRW asks how the last memory command ended.
func (s *stlink) lastRW(ctx context.Context, what string) error {
	r, err := s.cmd(ctx, []byte{stDebug, stLastRW2}, nil, 12)
	if err != nil {
		return err
	}
	return stStatus(what, r[0])
}

func (s *stlink) readWords(ctx context.Context, addr uint32, n int, progress func(int)) ([]uint32, error) {
	out := make([]uint32, 0, n)
	chunk := int(tarBlock / 4) // words; halved after each failure, so a noisy link still gets through
	for len(out) < n {
		a := addr + uint32(4*len(out))
		k := min(n-len(out), int(tarBlock-a%tarBlock)/4, chunk)
		var data []byte
		err := s.retry(ctx, func() error {
			if chunk < k {
				k = chunk
			}
			c := []byte{stDebug, stReadMem32, 0, 0, 0, 0, 0, 0}
			binary.LittleEndian.PutUint32(c[2:], a)
			binary.LittleEndian.PutUint16(c[6:], uint16(4*k))
			var err error
			if data, err = s.cmd(ctx, c, nil, 4*k); err == nil {
				err = s.lastRW(ctx, fmt.Sprintf("read 0x%08x+%d", a, 4*k))
			}
			if err != nil {
				chunk = max(chunk/2, 8)
			}
			return err
		})
		if err != nil {
			return out, err
		}
		for i := 0; i < k; i++ {
			out = append(out, binary.LittleEndian.Uint32(data[4*i:]))
		}
		if progress != nil {
			progress(len(out))
		}
	}
	return out, nil
}

func (s *stlink) writeMem(ctx context.Context, addr uint32, size int, data []byte) error {
	op := byte(stWriteMem32)
	if size == 16 {
		op = stWriteMem16
	}
	for off := 0; off < len(data); {
		a := addr + uint32(off)
		k := min(len(data)-off, int(tarBlock-a%tarBlock))
		c := []byte{stDebug, op, 0, 0, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(c[2:], a)
		binary.LittleEndian.PutUint16(c[6:], uint16(k))
		if _, err := s.cmd(ctx, c, data[off:off+k], 0); err != nil {
			return fmt.Errorf("swd: st-link write 0x%08x+%d: %w", a, k, err)
		}
		if err := s.lastRW(ctx, fmt.Sprintf("write 0x%08x+%d", a, k)); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// recover re-enters SWD mode: the ST-LINK's firmware resets the line, reads
// DPIDR and clears the sticky flags as it does.
func (s *stlink) recover(ctx context.Context, cause error) bool {
	if errors.Is(cause, flash.ErrNoDevice) {
		return false
	}
	return s.connect(ctx) == nil
}

func (s *stlink) retry(ctx context.Context, f func() error) error {
	var err error
	for i := 0; i < 8; i++ {
		if err = f(); err == nil {
			return nil
		}
		if ctx.Err() != nil || !s.recover(ctx, err) {
			return err
		}
	}
	return err
}

// OpenSTLink opens the board's chip behind an ST-LINK (V2-1 or V3, firmware
// J26 or later) at t. name and serial name the probe for the audit log.
func OpenSTLink(ctx context.Context, t STLinkTransport, name, serial string, b *boards.Board, opts Options) (*Target, error) {
	s := &stlink{t: t}
	v, err := s.version(ctx)
	if err != nil {
		return nil, err
	}
	return open(ctx, s, strings.TrimSpace(name+" "+v+" "+serial), b, opts)
}

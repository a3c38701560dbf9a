package stk500v2

import (
	"errors"
	"fmt"
)

// Framing and commands (AVR068).
const (
	MessageStart = 0x1B
	Token        = 0x0E

	CmdSignOn           = 0x01
	CmdSetParameter     = 0x02
	CmdGetParameter     = 0x03
	CmdLoadAddress      = 0x06
	CmdEnterProgmodeISP = 0x10
	CmdLeaveProgmodeISP = 0x11
	CmdChipEraseISP     = 0x12
	CmdProgramFlashISP  = 0x13
	CmdReadFlashISP     = 0x14
	CmdProgramEEPROMISP = 0x15
	CmdReadEEPROMISP    = 0x16
	CmdReadFuseISP      = 0x18
	CmdReadLockISP      = 0x1A
	CmdReadSignatureISP = 0x1B
	CmdSPIMulti         = 0x1D

	StatusCmdOK     = 0x00
	StatusCmdFailed = 0xC0

	ParamHWVersion = 0x90
	ParamSWMajor   = 0x91
	ParamSWMinor   = 0x92
)

// MaxBody is the largest body a frame may carry here (the bootloader's
// message buffer holds 285 bytes).
const MaxBody = 285

// Frame is one message.
type Frame struct {
	Seq  byte
	Body []byte
}

// ErrChecksum means a frame's checksum does not match its bytes.
var ErrChecksum = errors.New("stk500v2: bad frame checksum")

// ErrShort means the bytes end before the frame does.
var ErrShort = errors.New("stk500v2: frame is incomplete")

// Encode returns the frame's bytes on the wire.
func Encode(seq byte, body []byte) []byte {
	out := make([]byte, 0, len(body)+6)
	out = append(out, MessageStart, seq, byte(len(body)>>8), byte(len(body)), Token)
	out = append(out, body...)
	var sum byte
	for _, b := range out {
		sum ^= b
	}
	return append(out, sum)
}

// Parse reads the first frame in b, skipping bytes before a MESSAGE_START.
// It returns the frame and how many bytes of b it used. ErrShort means more
// bytes are needed; other errors describe a frame that must be dropped.
func Parse(b []byte) (Frame, int, error) {
	start := 0
	for start < len(b) && b[start] != MessageStart {
		start++
	}
	b = b[start:]
	if len(b) < 5 {
		return Frame{}, start, ErrShort
	}
	size := int(b[2])<<8 | int(b[3])
	if b[4] != Token {
		return Frame{}, start + 1, fmt.Errorf("stk500v2: frame token 0x%02x, want 0x%02x", b[4], Token)
	}
	if size > MaxBody {
		return Frame{}, start + 1, fmt.Errorf("stk500v2: frame body of %d bytes is larger than %d", size, MaxBody)
	}
	if len(b) < 6+size {
		return Frame{}, start, ErrShort
	}
	var sum byte
	for _, c := range b[:5+size] {
		sum ^= c
	}
	if sum != b[5+size] {
		return Frame{}, start + 1, fmt.Errorf("%w: 0x%02x, want 0x%02x", ErrChecksum, b[5+size], sum)
	}
	return Frame{Seq: b[1], Body: append([]byte(nil), b[5:5+size]...)}, start + 6 + size, nil
}

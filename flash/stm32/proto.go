package stm32

import (
	"context"
	"errors"
	"fmt"
	"time"

	"kiln.dev/kiln/flash"
)

// Protocol bytes and commands (AN3155).
const (
	ack  = 0x79
	nack = 0x1F
	busy = 0x76 // I2C/SPI only; tolerated while waiting

	cmdInit        = 0x7F
	cmdGet         = 0x00
	cmdGetVersion  = 0x01
	cmdGetID       = 0x02
	cmdReadMemory  = 0x11
	cmdGo          = 0x21
	cmdWriteMemory = 0x31
	cmdErase       = 0x43
	cmdExtErase    = 0x44
	cmdChecksum    = 0xA1

	blockSize = 256
)

var (
	// ErrNACK means the bootloader refused a command or its arguments.
	ErrNACK = errors.New("bootloader answered NACK")
	// ErrWrongDevice means Get ID named another product than the board's.
	// It is flash.ErrWrongDevice, so callers need not know the back end.
	ErrWrongDevice = flash.ErrWrongDevice
	// ErrUnsupported means the bootloader does not list a command kiln needs.
	ErrUnsupported = errors.New("command not supported by this bootloader")
	// ErrGarbled means the device answered with a byte the protocol does
	// not allow there (line noise, or a lost byte shifted the exchange).
	ErrGarbled = errors.New("garbled answer")
)

// noBootloader is the diagnosis when 0x7F never gets an answer.
type noBootloader struct{ tries int }

func (e noBootloader) Error() string {
	return fmt.Sprintf("stm32: no answer from bootloader (%d tries): is BOOT0 high and the board reset? is the baud rate right?", e.tries)
}

func (e noBootloader) Unwrap() error { return flash.ErrNoAnswer }

// wire is the byte layer: commands, ACKs and frames over a flash.Link.
type wire struct {
	l       *flash.Link
	timeout time.Duration // answer timeout beyond the wire time
	byteT   time.Duration // one byte at the baud rate
}

// frameTime is how long n bytes may take to arrive.
func (w *wire) frameTime(n int) time.Duration {
	return w.timeout + 2*time.Duration(n)*w.byteT
}

// ack waits for ACK. NACK is ErrNACK; other bytes are ErrGarbled.
func (w *wire) ack(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, err := w.l.Byte(ctx, time.Until(deadline))
		if err != nil {
			return err
		}
		switch b {
		case ack:
			return nil
		case nack:
			return ErrNACK
		case busy:
			continue
		}
		return fmt.Errorf("%w: 0x%02x instead of ACK", ErrGarbled, b)
	}
}

func (w *wire) send(p ...byte) error {
	_, err := w.l.Write(p)
	return err
}

// cmd sends a command byte and its complement and waits for ACK.
func (w *wire) cmd(ctx context.Context, c byte) error {
	if err := w.send(c, c^0xFF); err != nil {
		return err
	}
	if err := w.ack(ctx, w.frameTime(3)); err != nil {
		return fmt.Errorf("command 0x%02x: %w", c, err)
	}
	return nil
}

// word sends a 32-bit big-endian value and its XOR checksum, then waits for ACK.
func (w *wire) word(ctx context.Context, v uint32) error {
	b := []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v), 0}
	b[4] = b[0] ^ b[1] ^ b[2] ^ b[3]
	if err := w.send(b...); err != nil {
		return err
	}
	return w.ack(ctx, w.frameTime(6))
}

// variable reads a reply "N, N+1 bytes, ACK" after an acknowledged command.
func (w *wire) variable(ctx context.Context) ([]byte, error) {
	n, err := w.l.Byte(ctx, w.frameTime(1))
	if err != nil {
		return nil, err
	}
	buf := make([]byte, int(n)+1)
	if err := w.l.ReadFull(ctx, buf, w.frameTime(len(buf)+1)); err != nil {
		return nil, err
	}
	if err := w.ack(ctx, w.frameTime(1)); err != nil {
		return nil, err
	}
	return buf, nil
}

func (w *wire) get(ctx context.Context) (version byte, cmds []byte, err error) {
	if err := w.cmd(ctx, cmdGet); err != nil {
		return 0, nil, err
	}
	b, err := w.variable(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("get: %w", err)
	}
	return b[0], b[1:], nil
}

// getVersion reads Get Version's bootloader version and two option bytes.
func (w *wire) getVersion(ctx context.Context) ([3]byte, error) {
	var v [3]byte
	if err := w.cmd(ctx, cmdGetVersion); err != nil {
		return v, err
	}
	if err := w.l.ReadFull(ctx, v[:], w.frameTime(3)); err != nil {
		return v, fmt.Errorf("get version: %w", err)
	}
	if err := w.ack(ctx, w.frameTime(1)); err != nil {
		return v, fmt.Errorf("get version: %w", err)
	}
	return v, nil
}

func (w *wire) getID(ctx context.Context) (uint16, error) {
	if err := w.cmd(ctx, cmdGetID); err != nil {
		return 0, err
	}
	b, err := w.variable(ctx)
	if err != nil {
		return 0, fmt.Errorf("get id: %w", err)
	}
	if len(b) < 2 {
		return 0, fmt.Errorf("get id: %w: %d byte product id", ErrGarbled, len(b))
	}
	return uint16(b[0])<<8 | uint16(b[1]), nil
}

func (w *wire) readMemory(ctx context.Context, addr uint32, n int) ([]byte, error) {
	if n < 1 || n > blockSize {
		return nil, fmt.Errorf("read memory: bad length %d", n)
	}
	if err := w.cmd(ctx, cmdReadMemory); err != nil {
		return nil, err
	}
	if err := w.word(ctx, addr); err != nil {
		return nil, fmt.Errorf("read memory at 0x%08x: address: %w", addr, err)
	}
	c := byte(n - 1)
	if err := w.send(c, c^0xFF); err != nil {
		return nil, err
	}
	if err := w.ack(ctx, w.frameTime(3)); err != nil {
		return nil, fmt.Errorf("read memory at 0x%08x: length %d: %w", addr, n, err)
	}
	buf := make([]byte, n)
	if err := w.l.ReadFull(ctx, buf, w.frameTime(n)); err != nil {
		return nil, fmt.Errorf("read memory at 0x%08x: %w", addr, err)
	}
	return buf, nil
}

// writeMemory programs data (a multiple of 4 bytes, at most 256) at a
// word-aligned address. progTime is how long programming may take.
func (w *wire) writeMemory(ctx context.Context, addr uint32, data []byte, progTime time.Duration) error {
	if len(data) == 0 || len(data) > blockSize || len(data)%4 != 0 || addr%4 != 0 {
		return fmt.Errorf("write memory: bad block 0x%x+%d", addr, len(data))
	}
	if err := w.cmd(ctx, cmdWriteMemory); err != nil {
		return err
	}
	if err := w.word(ctx, addr); err != nil {
		return fmt.Errorf("write memory at 0x%08x: address: %w", addr, err)
	}
	frame := make([]byte, 0, len(data)+2)
	frame = append(frame, byte(len(data)-1))
	frame = append(frame, data...)
	frame = append(frame, xor(frame))
	if err := w.send(frame...); err != nil {
		return err
	}
	if err := w.ack(ctx, w.frameTime(len(frame)+1)+progTime); err != nil {
		return fmt.Errorf("write memory at 0x%08x: %w", addr, err)
	}
	return nil
}

// erase erases pages with the bootloader's erase command (legacy 0x43:
// one-byte page numbers; extended 0x44: two-byte).
func (w *wire) erase(ctx context.Context, cmd byte, pages []int, eraseTime time.Duration) error {
	if err := w.cmd(ctx, cmd); err != nil {
		return err
	}
	var frame []byte
	if cmd == cmdErase {
		frame = append(frame, byte(len(pages)-1))
		for _, p := range pages {
			frame = append(frame, byte(p))
		}
	} else {
		n := len(pages) - 1
		frame = append(frame, byte(n>>8), byte(n))
		for _, p := range pages {
			frame = append(frame, byte(p>>8), byte(p))
		}
	}
	frame = append(frame, xor(frame))
	if err := w.send(frame...); err != nil {
		return err
	}
	if err := w.ack(ctx, w.frameTime(len(frame)+1)+eraseTime); err != nil {
		return fmt.Errorf("erase pages %v: %w", pages, err)
	}
	return nil
}

// checksum asks the device for the STM32 CRC-32 of a word-aligned region.
func (w *wire) checksum(ctx context.Context, addr uint32, n int) (uint32, error) {
	if err := w.cmd(ctx, cmdChecksum); err != nil {
		return 0, err
	}
	if err := w.word(ctx, addr); err != nil {
		return 0, fmt.Errorf("checksum at 0x%08x: address: %w", addr, err)
	}
	if err := w.word(ctx, uint32(n)); err != nil {
		return 0, fmt.Errorf("checksum at 0x%08x: length %d: %w", addr, n, err)
	}
	// The device reads the region (about 1 ms per 10 KiB) and answers.
	if err := w.ack(ctx, w.frameTime(1)+time.Duration(n/1024)*time.Millisecond); err != nil {
		return 0, fmt.Errorf("checksum at 0x%08x: %w", addr, err)
	}
	b := make([]byte, 5)
	if err := w.l.ReadFull(ctx, b, w.frameTime(5)); err != nil {
		return 0, fmt.Errorf("checksum at 0x%08x: %w", addr, err)
	}
	if xor(b[:4]) != b[4] {
		return 0, fmt.Errorf("checksum at 0x%08x: %w: bad XOR", addr, ErrGarbled)
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), nil
}

func (w *wire) goCmd(ctx context.Context, addr uint32) error {
	if err := w.cmd(ctx, cmdGo); err != nil {
		return err
	}
	if err := w.word(ctx, addr); err != nil {
		return fmt.Errorf("go 0x%08x: %w", addr, err)
	}
	return nil
}

// drain reads and drops bytes until the line is quiet for quiet. It reports
// how many bytes it dropped.
func (w *wire) drain(ctx context.Context, quiet time.Duration) (int, error) {
	n := 0
	for n < 1<<16 {
		_, err := w.l.Byte(ctx, quiet)
		if errors.Is(err, flash.ErrNoAnswer) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, fmt.Errorf("%w: the line never went quiet", ErrGarbled)
}

// resync brings the bootloader back to a command boundary after an error.
//
// It drains the line, then sends enough 0xFF bytes to finish any frame the
// device is still waiting for (at most 1+256+1 bytes); the device answers
// NACK to every bad frame and every 0xFF 0xFF "command". The drained reply
// tells whether anyone is there. A last 0xFF then lands either as the
// complement of a dangling 0xFF (NACK at once) or as a new command byte
// (NACK after one more).
func (w *wire) resync(ctx context.Context) error {
	var err error
	for i := 0; i < 3; i++ {
		if err = w.resyncOnce(ctx); err == nil || !errors.Is(err, ErrGarbled) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	return nil
}

func (w *wire) resyncOnce(ctx context.Context) error {
	quiet := w.quiet()
	if _, err := w.drain(ctx, quiet); err != nil {
		return err
	}
	ff := make([]byte, blockSize+4)
	for i := range ff {
		ff[i] = 0xFF
	}
	if err := w.send(ff...); err != nil {
		return err
	}
	if _, err := w.l.Byte(ctx, w.timeout+w.frameTime(len(ff))); err != nil {
		if errors.Is(err, flash.ErrNoAnswer) {
			return fmt.Errorf("the bootloader stopped answering: %w: nothing came back for %d bytes", flash.ErrNoAnswer, len(ff))
		}
		return err
	}
	if _, err := w.drain(ctx, quiet); err != nil {
		return err
	}
	for i := 0; i < 2; i++ {
		if err := w.send(0xFF); err != nil {
			return err
		}
		wait := quiet
		if i > 0 {
			wait = w.frameTime(2)
		}
		b, err := w.l.Byte(ctx, wait)
		if errors.Is(err, flash.ErrNoAnswer) {
			continue
		}
		if err != nil {
			return err
		}
		if b == nack {
			_, err := w.drain(ctx, quiet)
			return err
		}
		break
	}
	return fmt.Errorf("%w: no NACK at a command boundary", ErrGarbled)
}

func (w *wire) quiet() time.Duration {
	q := w.timeout / 10
	if q < 20*time.Millisecond {
		q = 20 * time.Millisecond
	}
	return q + 8*w.byteT
}

func xor(b []byte) byte {
	var x byte
	for _, c := range b {
		x ^= c
	}
	return x
}

// CRC32 is the checksum the STM32 CRC unit (and Get Checksum) computes:
// polynomial 0x04C11DB7, initial value 0xFFFFFFFF, data taken as 32-bit
// little-endian words and shifted in MSB first, no reflection, no final XOR.
// len(b) must be a multiple of 4; a shorter tail is ignored.
func CRC32(b []byte) uint32 {
	crc := uint32(0xFFFFFFFF)
	for i := 0; i+3 < len(b); i += 4 {
		crc ^= uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
		crc = crcTable[crc>>24] ^ crc<<8
		crc = crcTable[crc>>24] ^ crc<<8
		crc = crcTable[crc>>24] ^ crc<<8
		crc = crcTable[crc>>24] ^ crc<<8
	}
	return crc
}

var crcTable = func() (t [256]uint32) {
	for i := range t {
		c := uint32(i) << 24
		for k := 0; k < 8; k++ {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04C11DB7
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

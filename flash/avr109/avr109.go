// Package avr109 speaks Atmel's AVR109 self-programming protocol, as the
// Caterina bootloader of ATmega32u4 boards (Arduino Leonardo, Micro) and
// avrdude's "-c avr109" programmer do: one-letter commands, a word address,
// and flash written a page at a time with block loads that the bootloader
// erases before it writes.
//
// A 32u4 board reaches its bootloader through the "1200 bps touch": opening
// its USB serial port at 1200 baud and closing it makes the sketch reset the
// chip, and the bootloader then enumerates as a new serial port for about
// eight seconds (flash/serialport finds it).
package avr109

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/flash"
)

// ErrNoSync means the bootloader did not identify itself.
var ErrNoSync = errors.New("avr109: no answer from the bootloader")

// ErrRefused means the bootloader answered a command with '?'.
var ErrRefused = errors.New("avr109: command refused")

// Config is what the client needs to know about the board.
type Config struct {
	// Signature is the board's AVR signature; Connect refuses another chip.
	Signature [3]byte
	// PageSize is the flash page in bytes (128 on the ATmega32u4).
	PageSize int
	// Timeout bounds each answer (default 1 s: a page write takes ~4 ms, a
	// chip erase of the application section ~1 s).
	Timeout time.Duration
	// Tries is how many times Connect asks for the identifier (default 5).
	Tries int
}

// Client talks to an AVR109 bootloader over a byte stream. It implements
// flash.Target and flash.Identifier.
type Client struct {
	cfg     Config
	l       *flash.Link
	id      string
	version string
	block   int
	sig     [3]byte
	inProg  bool
}

var (
	_ flash.Target     = (*Client)(nil)
	_ flash.Identifier = (*Client)(nil)
)

// New returns a client on rw. Call Connect before Write or ReadBack.
func New(rw io.ReadWriter, cfg Config) *Client {
	if cfg.PageSize <= 0 {
		cfg.PageSize = 128
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Tries <= 0 {
		cfg.Tries = 5
	}
	return &Client{cfg: cfg, l: flash.NewLink(rw)}
}

// ask sends cmd and reads n answer bytes.
func (c *Client) ask(ctx context.Context, n int, cmd ...byte) ([]byte, error) {
	if _, err := c.l.Write(cmd); err != nil {
		return nil, fmt.Errorf("avr109: send %q: %w", cmd[0], err)
	}
	b := make([]byte, n)
	if err := c.l.ReadFull(ctx, b, c.cfg.Timeout); err != nil {
		return nil, fmt.Errorf("avr109: answer to %q: %w", cmd[0], err)
	}
	if n > 0 && b[0] == '?' && n == 1 {
		return b, fmt.Errorf("avr109: %q: %w", cmd[0], ErrRefused)
	}
	return b, nil
}

// cr sends cmd and expects the carriage return that acknowledges it.
func (c *Client) cr(ctx context.Context, cmd ...byte) error {
	b, err := c.ask(ctx, 1, cmd...)
	if err != nil {
		return err
	}
	if b[0] != '\r' {
		return fmt.Errorf("avr109: %q answered 0x%02x, not CR: %w", cmd[0], b[0], flash.ErrNoAnswer)
	}
	return nil
}

// Connect identifies the bootloader, reads its block size and the chip's
// signature (refusing another chip: flash.ErrWrongDevice) and enters
// programming mode.
func (c *Client) Connect(ctx context.Context) error {
	var err error
	for i := 0; i < c.cfg.Tries; i++ {
		c.l.Discard()
		var b []byte
		if b, err = c.ask(ctx, 7, 'S'); err == nil {
			c.id = string(b)
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// An ESC resynchronises a bootloader that took a stray byte as a
		// command argument.
		_, _ = c.l.Write([]byte{27})
	}
	if err != nil {
		return fmt.Errorf("%w (%v)", ErrNoSync, err)
	}
	v, err := c.ask(ctx, 2, 'V')
	if err != nil {
		return err
	}
	c.version = fmt.Sprintf("%c.%c", v[0], v[1])
	b, err := c.ask(ctx, 3, 'b')
	if err != nil {
		return err
	}
	if b[0] != 'Y' {
		return fmt.Errorf("avr109: %s does not support block transfers: %w", c.id, ErrRefused)
	}
	c.block = int(b[1])<<8 | int(b[2])
	if c.block < 2 || c.block%2 != 0 {
		return fmt.Errorf("avr109: %s reports a block size of %d: %w", c.id, c.block, flash.ErrNoAnswer)
	}
	s, err := c.ask(ctx, 3, 's')
	if err != nil {
		return err
	}
	c.sig = [3]byte{s[2], s[1], s[0]} // AVR109 sends the signature last byte first
	if c.sig != c.cfg.Signature {
		return fmt.Errorf("avr109: the chip's signature is %x, the board's %x: %w", c.sig, c.cfg.Signature, flash.ErrWrongDevice)
	}
	if err := c.cr(ctx, 'P'); err != nil {
		return err
	}
	c.inProg = true
	return nil
}

// setAddress sets the word address of the next block.
func (c *Client) setAddress(ctx context.Context, byteAddr uint32) error {
	w := byteAddr / 2
	return c.cr(ctx, 'A', byte(w>>8), byte(w))
}

// Write programs every page the image touches; the bootloader erases each
// page before writing it. Bytes of a page the image does not cover are
// written erased (0xFF).
func (c *Client) Write(ctx context.Context, img *flash.Image, p flash.Progress) error {
	ps := uint32(c.cfg.PageSize)
	start, flat := img.Flat(0xff)
	first := start / ps * ps
	end := (start + uint32(len(flat)) + ps - 1) / ps * ps
	buf := make([]byte, end-first)
	for i := range buf {
		buf[i] = 0xff
	}
	copy(buf[start-first:], flat)
	touched := map[uint32]bool{}
	for _, s := range img.Segments {
		for a := s.Addr / ps * ps; uint64(a) < s.End(); a += ps {
			touched[a] = true
		}
	}
	total, done := int64(len(touched))*int64(ps), int64(0)
	for a := first; a < end; a += ps {
		if !touched[a] {
			continue
		}
		page := buf[a-first : a-first+ps]
		cmd := append([]byte{'B', byte(ps >> 8), byte(ps), 'F'}, page...)
		err := c.retry(ctx, func() error {
			if err := c.setAddress(ctx, a); err != nil {
				return err
			}
			return c.cr(ctx, cmd...)
		})
		if err != nil {
			return fmt.Errorf("avr109: write page 0x%04x: %w", a, err)
		}
		done += int64(ps)
		p.Report("write", done, total)
	}
	return nil
}

// ReadBack reads flash in blocks of the bootloader's size.
func (c *Client) ReadBack(ctx context.Context, r flash.Region, p flash.Progress) ([]byte, error) {
	start := r.Addr &^ 1
	end := (r.Addr + uint32(r.Size) + 1) &^ 1
	out := make([]byte, 0, end-start)
	for a := start; a < end; {
		n := min(uint32(c.block), end-a)
		var b []byte
		err := c.retry(ctx, func() error {
			if err := c.setAddress(ctx, a); err != nil {
				return err
			}
			var err error
			b, err = c.ask(ctx, int(n), 'g', byte(n>>8), byte(n), 'F')
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("avr109: read 0x%04x+%d: %w", a, n, err)
		}
		out = append(out, b...)
		a += n
		p.Report("read", int64(len(out)), int64(end-start))
	}
	return out[r.Addr-start : r.Addr-start+uint32(r.Size)], nil
}

// retry runs f up to four times, bringing the bootloader back into step
// after a lost or garbled answer: AVR109 has no checksums, so a dropped byte
// leaves the bootloader waiting inside a block, and a few 'S' requests fill
// it out until the identifier comes back. A garbled byte that reached flash
// is the read-back proof's to catch.
func (c *Client) retry(ctx context.Context, f func() error) error {
	var err error
	for i := 0; i < 4; i++ {
		if err = f(); err == nil || ctx.Err() != nil || errors.Is(err, ErrRefused) {
			return err
		}
		c.resync(ctx)
	}
	return err
}

func (c *Client) resync(ctx context.Context) {
	t := c.cfg.Timeout / 4
	for i := 0; i < 8; i++ {
		c.l.Discard()
		if _, err := c.l.Write([]byte{'S'}); err != nil {
			return
		}
		b := make([]byte, 7)
		if err := c.l.ReadFull(ctx, b, t); err == nil && string(b) == c.id {
			return
		}
	}
}

// Identity names the bootloader and the chip.
func (c *Client) Identity() string {
	return fmt.Sprintf("%s %s (AVR109) signature %x", c.id, c.version, c.sig)
}

// Close leaves programming mode and starts the application ('L', 'E').
func (c *Client) Close() error {
	if !c.inProg {
		return nil
	}
	c.inProg = false
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.Timeout)
	defer cancel()
	if err := c.cr(ctx, 'L'); err != nil {
		return err
	}
	return c.cr(ctx, 'E')
}

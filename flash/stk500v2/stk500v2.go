package stk500v2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/avrboot"
)

var (
	_ flash.Target     = (*Client)(nil)
	_ flash.Identifier = (*Client)(nil)
)

// ErrStatus means the device answered a command with a failure status.
var ErrStatus = errors.New("stk500v2: command failed")

// Config is what the client needs to know about the board and the line.
type Config struct {
	// Signature is the board's AVR signature; Connect refuses another device.
	Signature [3]byte
	// PageSize is the flash page in bytes (256 on the ATmega2560).
	PageSize int
	// FlashSize is the chip's flash in bytes, bootloader included; above
	// 128 KiB, load addresses carry bit 31 as avrdude sends them.
	FlashSize int
	// Baud is the line rate; it sizes timeouts (default 115200).
	Baud int
	// Reset pulses the board's reset line; nil when the line has none.
	Reset func(ctx context.Context) error
	// Tries is how many times Connect tries to sign on (default 10).
	Tries int
	// Retries bounds retries of one frame, and restarts of a write (default 4).
	Retries int
	// Timeout is how long to wait for an answer beyond its wire time
	// (default 300 ms).
	Timeout time.Duration
	// BootTime is how long the bootloader may take after a reset before it
	// reads the line; the first CMD_SIGN_ON after a reset waits this long
	// more. Default 600 ms; ignored when Reset is nil.
	BootTime time.Duration
}

// Client talks to the Mega 2560 bootloader. It implements flash.Target and
// flash.Identifier.
type Client struct {
	cfg       Config
	l         *flash.Link
	seq       byte
	sig       [3]byte
	signOn    string
	connected bool
	// addr is the bootloader's address pointer when addrOK: it moves on by
	// every page written and every byte read, so consecutive requests need
	// no CMD_LOAD_ADDRESS.
	addr   uint32
	addrOK bool
}

// New returns a client on rw. Call Connect before Write or ReadBack.
func New(rw io.ReadWriter, cfg Config) *Client {
	if cfg.Baud <= 0 {
		cfg.Baud = 115200
	}
	if cfg.Tries <= 0 {
		cfg.Tries = 10
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 300 * time.Millisecond
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 256
	}
	if cfg.BootTime <= 0 {
		cfg.BootTime = 600 * time.Millisecond
	}
	return &Client{cfg: cfg, l: flash.NewLink(rw)}
}

func (c *Client) wire(n int) time.Duration {
	return avrboot.WireTime(c.cfg.Baud, n)
}

// command sends body in a frame and returns the answer's body after checking
// that it answers this command and reports STATUS_CMD_OK. Stale frames
// (another sequence number) are skipped.
func (c *Client) command(ctx context.Context, body []byte, answer int) ([]byte, error) {
	return c.commandWait(ctx, body, answer, 0)
}

// commandWait is command with extra time to wait for the answer.
func (c *Client) commandWait(ctx context.Context, body []byte, answer int, extra time.Duration) ([]byte, error) {
	c.seq++
	seq := c.seq
	if _, err := c.l.Write(Encode(seq, body)); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	timeout := c.cfg.Timeout + c.wire(len(body)+answer+12) + extra
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w: no answer to command 0x%02x in %v", flash.ErrNoAnswer, body[0], timeout)
		}
		f, err := c.readFrame(ctx, left)
		if errors.Is(err, ErrChecksum) {
			return nil, err
		}
		if err != nil {
			return nil, err
		}
		if f.Seq != seq || len(f.Body) < 2 || f.Body[0] != body[0] {
			continue // an answer to an earlier try
		}
		if f.Body[1] != StatusCmdOK {
			return f.Body, fmt.Errorf("%w: command 0x%02x: status 0x%02x", ErrStatus, body[0], f.Body[1])
		}
		return f.Body, nil
	}
}

// readFrame reads one frame: it skips to MESSAGE_START, then reads the
// header, the body and the checksum.
func (c *Client) readFrame(ctx context.Context, timeout time.Duration) (Frame, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := c.l.Byte(ctx, time.Until(deadline))
		if err != nil {
			return Frame{}, err
		}
		if b != MessageStart {
			continue
		}
		hdr := make([]byte, 4)
		if err := c.l.ReadFull(ctx, hdr, time.Until(deadline)); err != nil {
			return Frame{}, err
		}
		size := int(hdr[1])<<8 | int(hdr[2])
		if hdr[3] != Token || size > MaxBody {
			continue
		}
		rest := make([]byte, size+1)
		if err := c.l.ReadFull(ctx, rest, time.Until(deadline)); err != nil {
			return Frame{}, err
		}
		f, _, err := Parse(append(append([]byte{MessageStart}, hdr...), rest...))
		return f, err
	}
}

// Connect signs on (pulsing reset before each try), reads the signature,
// refuses a device that is not the board (flash.ErrWrongDevice) and enters
// programming mode.
func (c *Client) Connect(ctx context.Context) error {
	if err := c.sync(ctx); err != nil {
		return err
	}
	for i := range c.sig {
		b, err := c.command(ctx, []byte{CmdSPIMulti, 4, 4, 0, 0x30, 0x00, byte(i), 0x00}, 7)
		if err != nil {
			return fmt.Errorf("stk500v2: read signature: %w", err)
		}
		if len(b) < 6 {
			return fmt.Errorf("stk500v2: read signature: short answer % x", b)
		}
		c.sig[i] = b[5]
	}
	if err := avrboot.CheckSignature("stk500v2", c.sig, c.cfg.Signature); err != nil {
		return err
	}
	c.connected = true
	return nil
}

func (c *Client) sync(ctx context.Context) error {
	c.addrOK = false
	return avrboot.Sync(ctx, "stk500v2", c.l, c.cfg.Tries, c.cfg.Reset, c.cfg.BootTime, func(boot time.Duration) error {
		b, err := c.commandWait(ctx, []byte{CmdSignOn}, 11, boot)
		if err != nil {
			return err
		}
		if len(b) >= 3 && len(b) >= 3+int(b[2]) {
			c.signOn = string(b[3 : 3+int(b[2])])
		}
		// Parameters as avrdude sends them; the bootloader ignores them.
		_, err = c.command(ctx, []byte{CmdEnterProgmodeISP, 200, 100, 25, 32, 0, 0x53, 3, 0xAC, 0x53, 0, 0}, 2)
		return err
	})
}

// Identity names the device.
func (c *Client) Identity() string {
	return fmt.Sprintf("avr signature %02x%02x%02x, stk500v2 bootloader %s", c.sig[0], c.sig[1], c.sig[2], c.signOn)
}

// at points the bootloader's address at addr, unless it is there already.
func (c *Client) at(ctx context.Context, addr uint32) error {
	if c.addrOK && c.addr == addr {
		return nil
	}
	c.addrOK = false
	if err := c.loadAddress(ctx, addr); err != nil {
		return err
	}
	c.addr, c.addrOK = addr, true
	return nil
}

func (c *Client) loadAddress(ctx context.Context, addr uint32) error {
	w := addr / 2
	if c.cfg.FlashSize > 128*1024 {
		w |= 1 << 31
	}
	_, err := c.command(ctx, []byte{CmdLoadAddress, byte(w >> 24), byte(w >> 16), byte(w >> 8), byte(w)}, 2)
	return err
}

// frame runs op, and once more after a timeout or a bad checksum (same
// bytes, new sequence number) without resetting the device.
func (c *Client) frame(ctx context.Context, what string, op func() error) error {
	var err error
	for i := 0; i < 2; i++ {
		if err = op(); err == nil || ctx.Err() != nil {
			return err
		}
		c.l.Discard()
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Write programs every page from 0 to the end of the image, in order (the
// bootloader erases pages in that order, whatever address is written).
// Bytes the image does not cover keep the device's content, read first.
// A failed page is resent; if it keeps failing the client resets the board
// and starts again from page 0.
func (c *Client) Write(ctx context.Context, img *flash.Image, p flash.Progress) error {
	if !c.connected {
		return errors.New("stk500v2: write: not connected")
	}
	ext := img.Extent()
	ps := uint32(c.cfg.PageSize)
	end := (uint64(ext.Addr) + uint64(ext.Size) + uint64(ps) - 1) / uint64(ps) * uint64(ps)
	pages, err := c.pageImage(ctx, img, uint32(end), p)
	if err != nil {
		return err
	}
	var werr error
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		if attempt > 0 {
			if err := c.sync(ctx); err != nil {
				return fmt.Errorf("stk500v2: write: %v; then %w", werr, err)
			}
		}
		if werr = c.writePages(ctx, pages, ps, p); werr == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stk500v2: write: %w", ctx.Err())
		}
	}
	return fmt.Errorf("stk500v2: write: gave up after %d tries: %w", c.cfg.Retries+1, werr)
}

// pageImage lays out bytes 0..end as pages: the image's bytes over what the
// device holds now (read only for pages the image does not fill).
func (c *Client) pageImage(ctx context.Context, img *flash.Image, end uint32, p flash.Progress) ([]byte, error) {
	buf := make([]byte, end)
	covered := make([]bool, end)
	for _, s := range img.Segments {
		copy(buf[s.Addr:], s.Data)
		for i := range s.Data {
			covered[int(s.Addr)+i] = true
		}
	}
	ps := c.cfg.PageSize
	for a := 0; a < int(end); a += ps {
		full := true
		for _, cv := range covered[a : a+ps] {
			full = full && cv
		}
		if full {
			continue
		}
		old, err := c.ReadBack(ctx, flash.Region{Addr: uint32(a), Size: ps}, nil)
		if err != nil {
			return nil, fmt.Errorf("stk500v2: keep the device's bytes at 0x%x: %w", a, err)
		}
		for i := range old {
			if !covered[a+i] {
				buf[a+i] = old[i]
			}
		}
	}
	return buf, nil
}

func (c *Client) writePages(ctx context.Context, pages []byte, ps uint32, p flash.Progress) error {
	// Reset the bootloader's erase pointer to page 0. It answers FAILED by
	// design (Arduino issue 543); only no answer at all is an error.
	err := c.frame(ctx, "chip erase", func() error {
		_, err := c.command(ctx, []byte{CmdChipEraseISP, 0, 0, 0xAC, 0x80, 0, 0}, 2)
		if errors.Is(err, ErrStatus) {
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	for a := uint32(0); a < uint32(len(pages)); a += ps {
		data := pages[a : a+ps]
		body := append([]byte{CmdProgramFlashISP, byte(ps >> 8), byte(ps), 0xC1, 10, 0x40, 0x4C, 0x20, 0, 0}, data...)
		err := c.frame(ctx, fmt.Sprintf("program page at 0x%05x", a), func() error {
			if err := c.at(ctx, a); err != nil {
				return err
			}
			c.addrOK = false // unknown until the answer proves the write
			if _, err := c.command(ctx, body, 2); err != nil {
				return err
			}
			c.addr, c.addrOK = a+ps, true
			return nil
		})
		if err != nil {
			return err
		}
		p.Report("write", int64(a+ps), int64(len(pages)))
	}
	return nil
}

// ReadBack reads r from flash, 256 bytes a frame.
func (c *Client) ReadBack(ctx context.Context, r flash.Region, p flash.Progress) ([]byte, error) {
	if !c.connected {
		return nil, errors.New("stk500v2: read: not connected")
	}
	start, end := avrboot.WordSpan(r)
	out := make([]byte, 0, end-uint64(start))
	for a := uint64(start); a < end; {
		n := min(256, end-a)
		addr := uint32(a)
		var got []byte
		var err error
		for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
			if attempt > 0 {
				// The board may have left the bootloader: reset and sign on.
				if serr := c.sync(ctx); serr != nil {
					return nil, fmt.Errorf("stk500v2: read flash at 0x%05x: %v; then %w", addr, err, serr)
				}
			}
			err = c.frame(ctx, fmt.Sprintf("read flash at 0x%05x", addr), func() error {
				if err := c.at(ctx, addr); err != nil {
					return err
				}
				c.addrOK = false
				b, err := c.command(ctx, []byte{CmdReadFlashISP, byte(n >> 8), byte(n), 0x20}, int(n)+3)
				if err != nil {
					return err
				}
				if len(b) != int(n)+3 || b[len(b)-1] != StatusCmdOK {
					return fmt.Errorf("stk500v2: read answer of %d bytes, want %d", len(b), n+3)
				}
				got = b[2 : 2+n]
				c.addr, c.addrOK = addr+uint32(n), true
				return nil
			})
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("stk500v2: %w", err)
		}
		out = append(out, got...)
		a += n
		p.Report("read", int64(len(out)), int64(end-uint64(start)))
	}
	off := r.Addr - start
	return out[off : off+uint32(r.Size)], nil
}

// Close leaves programming mode; the bootloader then starts the application.
func (c *Client) Close() error {
	if !c.connected {
		return nil
	}
	c.connected = false
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout+time.Second)
	defer cancel()
	if _, err := c.command(ctx, []byte{CmdLeaveProgmodeISP, 1, 1}, 2); err != nil {
		return fmt.Errorf("stk500v2: leave programming mode: %w", err)
	}
	return nil
}

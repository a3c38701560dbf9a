package stk500

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

// Protocol bytes (Atmel AVR061, as Optiboot uses them).
const (
	CmdGetSync       = 0x30
	CmdGetParameter  = 0x41
	CmdSetDevice     = 0x42
	CmdSetDeviceExt  = 0x45
	CmdEnterProgmode = 0x50
	CmdLeaveProgmode = 0x51
	CmdChipErase     = 0x52
	CmdLoadAddress   = 0x55
	CmdUniversal     = 0x56
	CmdProgPage      = 0x64
	CmdReadPage      = 0x74
	CmdReadSign      = 0x75

	CRCEOP     = 0x20
	RespInSync = 0x14
	RespOK     = 0x10
	RespFailed = 0x11
	RespNoSync = 0x15

	ParamHWVersion = 0x80
	ParamSWMajor   = 0x81
	ParamSWMinor   = 0x82

	MemFlash  = 'F'
	MemEEPROM = 'E'
)

// ErrNoSync means the device answered a request with NOSYNC or with a byte
// that is not INSYNC: the two sides disagree about where a request starts.
var ErrNoSync = errors.New("stk500: out of sync")

// Config is what the client needs to know about the board and the line.
type Config struct {
	// Signature is the board's AVR signature; Connect refuses another device.
	Signature [3]byte
	// PageSize is the flash page in bytes (128 on the ATmega328P).
	PageSize int
	// Baud is the line rate; it sizes read chunks and timeouts (default 115200).
	Baud int
	// Reset pulses the board's reset line and waits for the bootloader;
	// nil when the line has no reset. It is called before every sync try.
	Reset func(ctx context.Context) error
	// Tries is how many times Connect tries to sync (default 10).
	Tries int
	// Retries is how many times a page or a read chunk is tried again after
	// a timeout or NOSYNC (default 4).
	Retries int
	// Timeout is how long to wait for an answer beyond the time its bytes
	// take on the wire (default 300 ms).
	Timeout time.Duration
	// ReadChunk caps the bytes one READ_PAGE asks for; 0 picks the largest
	// the bootloader's version and watchdog allow.
	ReadChunk int
	// BootTime is how long the bootloader may take after a reset before it
	// reads the line (Optiboot on an Uno first blinks its LED three times,
	// about 0.4 s); the first GET_SYNC after a reset waits this long more.
	// Default 600 ms; ignored when Reset is nil.
	BootTime time.Duration
}

// Client talks to an STK500v1 bootloader over a byte stream. It implements
// flash.Target and flash.Identifier.
type Client struct {
	cfg       Config
	l         *flash.Link
	sig       [3]byte
	major     byte
	minor     byte
	connected bool
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
		cfg.PageSize = 128
	}
	if cfg.BootTime <= 0 {
		cfg.BootTime = 600 * time.Millisecond
	}
	return &Client{cfg: cfg, l: flash.NewLink(rw)}
}

// wire returns how long n bytes take on the line.
func (c *Client) wire(n int) time.Duration {
	return avrboot.WireTime(c.cfg.Baud, n)
}

// Connect syncs with the bootloader (pulsing reset before each try), reads
// its version and signature, refuses a device that is not the board
// (flash.ErrWrongDevice), and enters programming mode.
func (c *Client) Connect(ctx context.Context) error {
	if err := c.sync(ctx); err != nil {
		return err
	}
	sig, err := c.cmd(ctx, []byte{CmdReadSign, CRCEOP}, 3, 0)
	if err != nil {
		return fmt.Errorf("stk500: read signature: %w", err)
	}
	copy(c.sig[:], sig)
	if err := avrboot.CheckSignature("stk500", c.sig, c.cfg.Signature); err != nil {
		return err
	}
	c.connected = true
	return nil
}

// sync resets the board and sends GET_SYNC until the bootloader answers,
// then reads its version and enters programming mode.
func (c *Client) sync(ctx context.Context) error {
	return avrboot.Sync(ctx, "stk500", c.l, c.cfg.Tries, c.cfg.Reset, c.cfg.BootTime, func(boot time.Duration) error {
		// One GET_SYNC per reset: the chip's receive buffer holds two bytes
		// while the bootloader starts, and a third would be garbage to it.
		if _, err := c.cmd(ctx, []byte{CmdGetSync, CRCEOP}, 0, boot); err != nil {
			return err
		}
		// A late answer to an earlier try may still be on its way: sync once
		// more on a quiet line so the next answer is the one we asked for.
		c.l.Discard()
		if _, err := c.cmd(ctx, []byte{CmdGetSync, CRCEOP}, 0, 0); err != nil {
			return err
		}
		maj, err := c.cmd(ctx, []byte{CmdGetParameter, ParamSWMajor, CRCEOP}, 1, 0)
		if err != nil {
			return err
		}
		minor, err := c.cmd(ctx, []byte{CmdGetParameter, ParamSWMinor, CRCEOP}, 1, 0)
		if err != nil {
			return err
		}
		c.major, c.minor = maj[0], minor[0]
		_, err = c.cmd(ctx, []byte{CmdEnterProgmode, CRCEOP}, 0, 0)
		return err
	})
}

// cmd sends req and reads INSYNC, n payload bytes and OK. extra is the
// wire time of a long answer, added to the timeout.
func (c *Client) cmd(ctx context.Context, req []byte, n int, extra time.Duration) ([]byte, error) {
	if _, err := c.l.Write(req); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	return c.answer(ctx, n, c.cfg.Timeout+c.wire(len(req)+n+2)+extra)
}

// addressed sends LOAD_ADDRESS and req in one write, then reads both
// answers. Optiboot handles LOAD_ADDRESS in microseconds, well inside the
// time the UART's receive buffer covers, so this saves a round trip per
// page without risking an overrun (pages themselves are never pipelined:
// the chip does not read the line while it programs flash).
func (c *Client) addressed(ctx context.Context, addr uint32, req []byte, n int, extra time.Duration) ([]byte, error) {
	if addr >= 0x20000 {
		return nil, fmt.Errorf("address 0x%x needs extended addressing, which this client does not speak", addr)
	}
	w := addr / 2
	buf := append([]byte{CmdLoadAddress, byte(w), byte(w >> 8), CRCEOP}, req...)
	if _, err := c.l.Write(buf); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	timeout := c.cfg.Timeout + c.wire(len(buf)+n+4) + extra
	if _, err := c.answer(ctx, 0, timeout); err != nil {
		return nil, fmt.Errorf("load address 0x%04x: %w", addr, err)
	}
	return c.answer(ctx, n, timeout)
}

// answer reads INSYNC, n payload bytes and OK.
func (c *Client) answer(ctx context.Context, n int, timeout time.Duration) ([]byte, error) {
	b, err := c.l.Byte(ctx, timeout)
	if err != nil {
		return nil, err
	}
	switch b {
	case RespInSync:
	case RespNoSync:
		return nil, fmt.Errorf("%w: device answered NOSYNC", ErrNoSync)
	default:
		return nil, fmt.Errorf("%w: got 0x%02x, want INSYNC", ErrNoSync, b)
	}
	resp := make([]byte, n+1)
	if err := c.l.ReadFull(ctx, resp, timeout); err != nil {
		return nil, err
	}
	switch resp[n] {
	case RespOK:
		return resp[:n], nil
	case RespFailed:
		return nil, fmt.Errorf("stk500: device answered FAILED")
	}
	return nil, fmt.Errorf("%w: got 0x%02x, want OK", ErrNoSync, resp[n])
}

// recover brings a confused or reset bootloader back: resync and re-enter
// programming mode. LOAD_ADDRESS is sent again by every page and chunk.
func (c *Client) recover(ctx context.Context) error {
	return c.sync(ctx)
}

// retry runs op, resyncing and trying again on a timeout or lost sync.
func (c *Client) retry(ctx context.Context, what string, op func() error) error {
	var err error
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		if attempt > 0 {
			if rerr := c.recover(ctx); rerr != nil {
				return fmt.Errorf("stk500: %s: %v; then %w", what, err, rerr)
			}
		}
		if err = op(); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stk500: %s: %w", what, ctx.Err())
		}
	}
	return fmt.Errorf("stk500: %s: gave up after %d tries: %w", what, c.cfg.Retries+1, err)
}

// Identity names the device: its signature and bootloader version.
func (c *Client) Identity() string {
	return fmt.Sprintf("avr signature %02x%02x%02x, stk500v1 bootloader %d.%d", c.sig[0], c.sig[1], c.sig[2], c.major, c.minor)
}

// Version returns the bootloader's software version.
func (c *Client) Version() (major, minor byte) { return c.major, c.minor }

// Write programs every flash page the image touches. Bytes of a touched page
// that the image does not cover are written as 0xFF (Optiboot erases the
// whole page before it writes it).
func (c *Client) Write(ctx context.Context, img *flash.Image, p flash.Progress) error {
	if !c.connected {
		return errors.New("stk500: write: not connected")
	}
	ps := uint32(c.cfg.PageSize)
	pages := pagesOf(img, ps)
	total := int64(len(pages)) * int64(ps)
	for i, pg := range pages {
		data := pageData(img, pg, ps)
		req := make([]byte, 0, len(data)+5)
		req = append(req, CmdProgPage, byte(len(data)>>8), byte(len(data)), MemFlash)
		req = append(req, data...)
		req = append(req, CRCEOP)
		err := c.retry(ctx, fmt.Sprintf("program page at 0x%04x", pg), func() error {
			_, err := c.addressed(ctx, pg, req, 0, 0)
			return err
		})
		if err != nil {
			return err
		}
		p.Report("write", int64(i+1)*int64(ps), total)
	}
	return nil
}

// pagesOf lists the page addresses the image touches, ascending.
func pagesOf(img *flash.Image, ps uint32) []uint32 {
	var pages []uint32
	for _, s := range img.Segments {
		for a := s.Addr / ps * ps; uint64(a) < s.End(); a += ps {
			if n := len(pages); n == 0 || pages[n-1] != a {
				pages = append(pages, a)
			}
		}
	}
	return pages
}

// pageData is the page at addr as the image has it, 0xFF where it is silent.
func pageData(img *flash.Image, addr, ps uint32) []byte {
	buf := make([]byte, ps)
	for i := range buf {
		buf[i] = 0xFF
	}
	end := uint64(addr) + uint64(ps)
	for _, s := range img.Segments {
		if s.End() <= uint64(addr) || uint64(s.Addr) >= end {
			continue
		}
		for i, b := range s.Data {
			a := uint64(s.Addr) + uint64(i)
			if a >= uint64(addr) && a < end {
				buf[a-uint64(addr)] = b
			}
		}
	}
	return buf
}

// chunk is the most bytes one READ_PAGE may ask for. Optiboot keeps byte
// counts in 8 bits on chips with pages under 256 bytes (the ATmega328P), and
// before version 5 everywhere: 256 bytes then. With 16-bit counts, what the
// line carries in half of Optiboot's one-second watchdog (sending does not
// feed it), at most 4 KiB.
func (c *Client) chunk() int {
	if c.cfg.ReadChunk > 0 {
		return c.cfg.ReadChunk
	}
	if c.major < 5 || c.cfg.PageSize < 256 {
		return 256
	}
	n := c.cfg.Baud / 10 / 2
	n = min(n, 4096)
	n = n / c.cfg.PageSize * c.cfg.PageSize
	return max(n, 256)
}

// ReadBack reads r from flash.
func (c *Client) ReadBack(ctx context.Context, r flash.Region, p flash.Progress) ([]byte, error) {
	if !c.connected {
		return nil, errors.New("stk500: read: not connected")
	}
	start, end := avrboot.WordSpan(r)
	out := make([]byte, 0, end-uint64(start))
	step := c.chunk()
	for a := uint64(start); a < end; {
		n := min(uint64(step), end-a)
		addr := uint32(a)
		var got []byte
		err := c.retry(ctx, fmt.Sprintf("read flash at 0x%04x", addr), func() error {
			var err error
			got, err = c.addressed(ctx, addr, []byte{CmdReadPage, byte(n >> 8), byte(n), MemFlash, CRCEOP}, int(n), c.wire(int(n)))
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		a += n
		p.Report("read", int64(len(out)), int64(end-uint64(start)))
	}
	off := r.Addr - start
	return out[off : off+uint32(r.Size)], nil
}

// Close leaves programming mode, which starts the application. It does not
// close the underlying stream.
func (c *Client) Close() error {
	if !c.connected {
		return nil
	}
	c.connected = false
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout+time.Second)
	defer cancel()
	if _, err := c.cmd(ctx, []byte{CmdLeaveProgmode, CRCEOP}, 0, 0); err != nil {
		return fmt.Errorf("stk500: leave programming mode: %w", err)
	}
	return nil
}

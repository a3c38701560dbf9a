package device

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/serialport"
)

var _ Session = (*session)(nil)

// Session is an open device: write and read it, then close it.
type Session interface {
	flash.Target
	flash.Identifier
	io.Closer
}

// Options tune how a session is opened. The zero value uses the board's
// settings.
type Options struct {
	// Baud overrides the board's line rate.
	Baud int
	// Reset overrides the board's reset kind ("dtr", "rts", "1200bps",
	// "gpio:NAME", "none").
	Reset string
	// Pins resolves gpio:NAME resets (tests pass periph's gpiotest pins).
	Pins map[string]serialport.Pin
	// Note receives remarks for the user, such as a port without modem lines.
	Note flash.Note
	// Timeout is a protocol's per-answer timeout; Tries its sync attempts.
	// Zero keeps the back end's defaults.
	Timeout time.Duration
	Tries   int
	// Emulator configures emu: devices.
	Emulator EmulatorOptions
	// Unprotect lets a back end remove a chip's read-out protection, which
	// erases it (swd: RDP level 1).
	Unprotect bool
}

// ErrUnsupported means kiln has no back end for the protocol here.
var ErrUnsupported = errors.New("protocol not supported")

// Open opens spec for board b with protocol (chosen by Resolve when
// empty: the port's own prefix, else the board's default).
func Open(ctx context.Context, spec string, b *boards.Board, protocol string, opts Options) (Session, error) {
	be, err := Resolve(spec, b, protocol)
	if err != nil {
		return nil, err
	}
	if name, ok := strings.CutPrefix(spec, "emu:"); ok && be.OpenEmulator != nil {
		// emu:BOARD#N is the Nth of several emulated boards of one kind
		// (a station flashing two probes at once).
		name, _, _ = strings.Cut(name, "#")
		model, err := boards.Get(name)
		if err != nil {
			return nil, fmt.Errorf("device: emu:%s: %w", name, err)
		}
		return be.OpenEmulator(model, b, opts)
	}
	switch {
	case be.Open != nil:
		return be.Open(ctx, spec, b, opts)
	case be.Connect == nil:
		return nil, fmt.Errorf("device: %s: %w (kiln drives it through its operations layer)", be.Protocol, ErrUnsupported)
	}
	line, err := openLine(ctx, spec, b, be.Protocol, opts)
	if err != nil {
		return nil, err
	}
	s, err := be.Connect(ctx, line, b, opts)
	if err != nil {
		line.Close()
		return nil, err
	}
	return s, nil
}

// Line is an open byte stream to a bootloader and its reset pulse.
type Line struct {
	io.ReadWriteCloser
	// Name is the port as the user knows it (/dev/ttyACM0, emu:arduino-uno).
	Name string
	// Reset pulses the board's reset and waits for its bootloader; nil if
	// the line cannot reset the board.
	Reset func(ctx context.Context) error
	// BootTime is how long the bootloader may take after Reset before it
	// answers; zero leaves the back end's default (an emulator needs none).
	BootTime time.Duration
}

// flashSize is the chip's whole flash: the application area and the
// bootloader above it.
func flashSize(b *boards.Board) int {
	n := b.Flash.End()
	if b.Bootloader != nil && b.Bootloader.End() > n {
		n = b.Bootloader.End()
	}
	return int(n)
}

// EmulatorOptions configure an emulated device.
type EmulatorOptions struct {
	// Pace delivers bytes at the board's baud rate, as a UART would.
	Pace bool
}

// Emulator is a device model that serves its protocol on a byte stream.
type Emulator interface {
	Serve(ctx context.Context, rw io.ReadWriter) error
}

// Resetter is an emulator with a reset pin.
type Resetter interface {
	Reset()
}

// Stateful is an emulator whose application flash can be loaded and saved
// (kiln emulate --state).
type Stateful interface {
	AppFlash() []byte
	LoadAppFlash([]byte) error
	// OnSessionEnd registers f, called after every programming session
	// that wrote flash.
	OnSessionEnd(f func())
}

// NewEmulator returns the device model of board b speaking protocol (b's
// default if empty or if b does not speak it), from the back-end table.
func NewEmulator(b *boards.Board, protocol string, opts EmulatorOptions) (Emulator, string, error) {
	if protocol == "" || !b.Supports(protocol) {
		protocol = b.Protocol
	}
	be, err := Lookup(protocol)
	if err != nil {
		return nil, "", err
	}
	if be.Emulate == nil {
		return nil, "", fmt.Errorf("device: no %s byte-stream emulator for %s: %w", protocol, b.Name, ErrUnsupported)
	}
	emu, err := be.Emulate(b, opts)
	if err != nil {
		return nil, "", err
	}
	return emu, protocol, nil
}

// openLine opens the byte stream spec names.
func openLine(ctx context.Context, spec string, b *boards.Board, protocol string, opts Options) (*Line, error) {
	if name, ok := strings.CutPrefix(spec, "emu:"); ok {
		return openEmulator(name, protocol, opts)
	}
	path := spec
	if spec == "auto" || strings.HasPrefix(spec, "usb:") {
		p, err := serialport.Find(b, spec)
		if err != nil {
			return nil, err
		}
		path = p
	}
	reset := b.Reset
	if opts.Reset != "" {
		reset = opts.Reset
	}
	baud := opts.Baud
	if baud <= 0 {
		baud = b.Baud
	}
	p, err := serialport.Open(ctx, path, serialport.Options{Baud: baud, Reset: reset, Pins: opts.Pins, Note: opts.Note})
	if err != nil {
		return nil, err
	}
	l := &Line{ReadWriteCloser: p, Name: p.Name()} // the bootloader may have come back on another port
	if reset != "" && reset != "none" && reset != "1200bps" {
		l.Reset = p.Reset
	}
	return l, nil
}

// openEmulator starts an emulator of board name on one end of an in-memory
// pipe and returns the other end. Closing the line stops the emulator.
func openEmulator(name, protocol string, opts Options) (*Line, error) {
	eb, err := boards.Get(name)
	if err != nil {
		return nil, fmt.Errorf("device: emu:%s: %w", name, err)
	}
	if !eb.Supports(protocol) {
		opts.Note.Printf("emu:%s speaks %s, not %s", name, eb.Protocol, protocol)
	}
	emu, _, err := NewEmulator(eb, protocol, opts.Emulator)
	if err != nil {
		return nil, err
	}
	host, dev := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- emu.Serve(ctx, dev) }()
	l := &Line{ReadWriteCloser: &emuConn{Conn: host, stop: func() error {
		cancel()
		dev.Close()
		return <-done
	}}, Name: "emu:" + name}
	if r, ok := emu.(Resetter); ok {
		l.Reset = func(context.Context) error { r.Reset(); return nil }
		l.BootTime = time.Millisecond
	}
	return l, nil
}

type emuConn struct {
	net.Conn
	once sync.Once
	stop func() error
	err  error
}

func (c *emuConn) Close() error {
	c.once.Do(func() {
		c.Conn.Close()
		c.err = c.stop()
	})
	return c.err
}

// NewSession joins a target, its identity and what must be closed after it
// (in order: the protocol client first, then the line) into a Session.
// Closers may be nil.
// A target that hashes on the device (flash.Hasher) stays one.
func NewSession(t flash.Target, id flash.Identifier, closers ...io.Closer) Session {
	s := &session{Target: t, id: id, closers: closers}
	if h, ok := t.(flash.Hasher); ok {
		return &hashingSession{session: s, h: h}
	}
	return s
}

type hashingSession struct {
	*session
	h flash.Hasher
}

func (s *hashingSession) HashRegions(ctx context.Context, rs []flash.Region) (string, error) {
	return s.h.HashRegions(ctx, rs)
}

type session struct {
	flash.Target
	id      flash.Identifier
	closers []io.Closer
}

func (s *session) Identity() string {
	if s.id == nil {
		return ""
	}
	return s.id.Identity()
}

func (s *session) Close() error {
	var errs []error
	for _, c := range s.closers {
		if c != nil {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

package stk500test

import (
	"context"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/internal/emuwire"
	"kiln.dev/kiln/flash/stk500"
)

// Faults selects injected faults; see emuwire.Faults.
type Faults = emuwire.Faults

// Config describes the emulated chip and line.
type Config struct {
	FlashSize int     // bytes of flash, bootloader included (32768)
	PageSize  int     // bytes (128)
	BootStart int     // first byte of the bootloader section (0x7E00)
	AppSize   int     // bytes of the application area, for state files (BootStart if 0)
	Signature [3]byte // 1e 95 0f
	Version   [2]byte // Optiboot major, minor (8, 3)
	EEPROM    int     // bytes of EEPROM (1024)

	// Watchdog is Optiboot's timeout (1 s); negative disables it.
	Watchdog time.Duration
	// Baud and Pace deliver bytes at the UART's rate; PageTime is the time
	// a page erase and write take when pacing (about 9 ms on the ATmega328P).
	Baud     int
	Pace     bool
	PageTime time.Duration
	Faults   Faults
}

// ForBoard returns the configuration of board b's chip.
func ForBoard(b *boards.Board) (Config, error) {
	sig, err := b.AVRSignature()
	if err != nil {
		return Config{}, err
	}
	if b.Bootloader == nil {
		return Config{}, fmt.Errorf("stk500test: board %s has no bootloader section", b.Name)
	}
	cfg := Config{
		FlashSize: int(b.Bootloader.End()),
		PageSize:  int(b.Flash.Page),
		BootStart: int(b.Bootloader.Base),
		AppSize:   int(b.Flash.Size),
		Signature: sig,
		Version:   [2]byte{8, 3},
		Baud:      b.Baud,
		Watchdog:  time.Second,
		// A page erase and a page write take about 4.5 ms each (tWD_FLASH).
		PageTime: 9 * time.Millisecond,
	}
	if b.EEPROM != nil {
		cfg.EEPROM = int(b.EEPROM.Size)
	}
	return cfg, nil
}

// Uno is an Arduino Uno's ATmega328P with Optiboot 8.3.
func Uno() Config {
	b, err := boards.Get("arduino-uno")
	if err != nil {
		panic(err)
	}
	cfg, err := ForBoard(b)
	if err != nil {
		panic(err)
	}
	return cfg
}

// Device is the emulated chip. Its methods are safe to call while it serves.
type Device struct {
	memory // Flash, AppFlash, LoadAppFlash, OnSessionEnd, PagesWritten
	cfg    Config
	wire   *emuwire.Wire
}

// memory holds the flash and EEPROM; a session that wrote flash ends at
// LEAVE_PROGMODE, or the line closing.
type memory = emuwire.Memory

// New returns a chip with erased flash (the bootloader section holds a
// stand-in pattern) and cfg's faults.
func New(cfg Config) *Device {
	if cfg.Watchdog == 0 {
		cfg.Watchdog = time.Second
	}
	if cfg.AppSize == 0 {
		cfg.AppSize = cfg.BootStart
	}
	wd := cfg.Watchdog
	if wd < 0 {
		wd = 0
	}
	d := &Device{cfg: cfg, wire: emuwire.New(emuwire.Config{Watchdog: wd, Baud: cfg.Baud, Pace: cfg.Pace, Faults: cfg.Faults})}
	d.Init("stk500test", cfg.FlashSize, cfg.AppSize, cfg.EEPROM)
	for i := range d.Code {
		if i >= cfg.BootStart {
			d.Code[i] = byte(i * 7) // stands for Optiboot's code
		}
	}
	return d
}

// Reset pulses the chip's reset pin (an external reset: Optiboot runs).
func (d *Device) Reset() { d.wire.Reset() }

// Serve runs the chip on rw until ctx ends or rw fails. It starts as after
// an external reset: in the bootloader.
func (d *Device) Serve(ctx context.Context, rw io.ReadWriter) error {
	return d.wire.Serve(ctx, rw, d.EndSession, d.optiboot)
}

// optiboot is Optiboot's main loop. It returns when the chip leaves the
// bootloader (watchdog, reset, a request without CRC_EOP).
func (d *Device) optiboot(ctx context.Context) error {
	w := d.wire
	var address uint32
	for {
		ch, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		nack := w.Nack()
		// verifySpace: a request must end with CRC_EOP, or Optiboot lets
		// the watchdog reset the chip into the application.
		verify := func() error {
			c, err := w.Getch(ctx)
			if err != nil {
				return err
			}
			if c != stk500.CRCEOP {
				w.SetWatchdog(16 * time.Millisecond)
				return emuwire.ErrApp
			}
			if nack {
				w.Putch(stk500.RespNoSync)
				return nil
			}
			w.Putch(stk500.RespInSync)
			return nil
		}
		getN := func(n int) ([]byte, error) { return w.GetN(ctx, n) }
		switch ch {
		case stk500.CmdGetParameter:
			which, err := w.Getch(ctx)
			if err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
			if nack {
				continue
			}
			switch which {
			case stk500.ParamSWMajor:
				w.Putch(d.cfg.Version[0])
			case stk500.ParamSWMinor:
				w.Putch(d.cfg.Version[1])
			default:
				w.Putch(0x03)
			}
		case stk500.CmdSetDevice, stk500.CmdSetDeviceExt:
			n := 20
			if ch == stk500.CmdSetDeviceExt {
				n = 5
			}
			if _, err := getN(n); err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
		case stk500.CmdLoadAddress:
			b, err := getN(2)
			if err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				address = (uint32(b[0]) | uint32(b[1])<<8) * 2
			}
		case stk500.CmdUniversal:
			if _, err := getN(4); err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				w.Putch(0x00)
			}
		case stk500.CmdProgPage:
			h, err := getN(3)
			if err != nil {
				return err
			}
			length := d.length(h[0], h[1])
			data, err := getN(length)
			if err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				d.write(h[2], address, data)
			}
		case stk500.CmdReadPage:
			h, err := getN(3)
			if err != nil {
				return err
			}
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				w.Putch(d.read(h[2], address, d.length(h[0], h[1]))...)
			}
		case stk500.CmdReadSign:
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				w.Putch(d.cfg.Signature[:]...)
			}
		case stk500.CmdLeaveProgmode:
			if err := verify(); err != nil {
				return err
			}
			if !nack {
				// Optiboot's "no-wait" exit: the watchdog fires in 16 ms.
				w.SetWatchdog(16 * time.Millisecond)
				d.EndSession()
			}
		default:
			// GET_SYNC, ENTER_PROGMODE and anything unknown.
			if err := verify(); err != nil {
				return err
			}
		}
		if !nack {
			w.Putch(stk500.RespOK)
		}
	}
}

// length is a PROG_PAGE or READ_PAGE byte count as Optiboot keeps it: its
// pagelen_t is 8 bits on chips whose pages are under 256 bytes (the
// ATmega328P), so the high byte is read and dropped, and a count of 0 runs
// Optiboot's do-while loop 256 times (65536 with 16-bit lengths).
func (d *Device) length(hi, lo byte) int {
	if d.cfg.PageSize < 256 {
		if lo == 0 {
			return 256
		}
		return int(lo)
	}
	if n := int(hi)<<8 | int(lo); n > 0 {
		return n
	}
	return 0x10000
}

// write is Optiboot's writebuffer: erase the page at address, fill the page
// buffer word by word (the buffer wraps inside the page), write the page.
// The bootloader section is protected by the lock bits: nothing changes there.
func (d *Device) write(memtype byte, address uint32, data []byte) {
	if memtype == stk500.MemEEPROM {
		d.Mu.Lock()
		for i, b := range data {
			if a := int(address) + i; a < len(d.Data) {
				d.Data[a] = b
			}
		}
		d.Mu.Unlock()
		return
	}
	if d.cfg.Pace && d.cfg.PageTime > 0 {
		time.Sleep(d.cfg.PageTime)
	}
	ps := uint32(d.cfg.PageSize)
	page := make([]byte, ps)
	for i := range page {
		page[i] = 0xFF
	}
	if len(data)%2 == 1 {
		data = append(data, 0xFF)
	}
	for i := 0; i < len(data); i += 2 {
		off := (address + uint32(i)) % ps
		page[off], page[off+1] = data[i], data[i+1]
	}
	base := (address % uint32(d.cfg.FlashSize)) / ps * ps
	d.Mu.Lock()
	defer d.Mu.Unlock()
	d.PageWritten()
	if int(base) >= d.cfg.BootStart {
		return
	}
	copy(d.Code[base:base+ps], page)
}

// read is Optiboot's read_mem: length bytes from address (a 16-bit pointer).
func (d *Device) read(memtype byte, address uint32, length int) []byte {
	d.Mu.Lock()
	defer d.Mu.Unlock()
	out := make([]byte, length)
	for i := range out {
		a := (int(address) + i) & 0xFFFF
		if memtype == stk500.MemEEPROM {
			if a < len(d.Data) {
				out[i] = d.Data[a]
			}
			continue
		}
		out[i] = d.Code[a%len(d.Code)]
	}
	return out
}

// Package avr109test models the Caterina bootloader of ATmega32u4 boards
// (Arduino Leonardo and Micro) as its C source behaves: the AVR109 command
// set avrdude's "-c avr109" uses, word addresses, flash block loads that
// erase the page first, and its exit after eight seconds without a command.
package avr109test

import (
	"context"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/internal/emuwire"
)

// Config describes the chip and the line.
type Config struct {
	FlashSize int     // bytes, bootloader included (32768)
	PageSize  int     // bytes (128)
	BootStart int     // first byte of the bootloader (0x7000)
	Signature [3]byte // 1e 95 87
	EEPROM    int     // bytes (1024)
	// Timeout is Caterina's exit after inactivity (8 s); negative disables.
	Timeout  time.Duration
	Baud     int
	Pace     bool
	PageTime time.Duration // page erase + write when pacing (~8 ms)
	Faults   emuwire.Faults
}

// ForBoard returns the configuration of board b's chip.
func ForBoard(b *boards.Board) (Config, error) {
	sig, err := b.AVRSignature()
	if err != nil {
		return Config{}, err
	}
	if b.Bootloader == nil {
		return Config{}, fmt.Errorf("avr109test: board %s has no bootloader section", b.Name)
	}
	cfg := Config{FlashSize: int(b.Bootloader.End()), PageSize: int(b.Flash.Page), BootStart: int(b.Bootloader.Base),
		Signature: sig, Baud: b.Baud, Timeout: 8 * time.Second, PageTime: 8 * time.Millisecond}
	if b.EEPROM != nil {
		cfg.EEPROM = int(b.EEPROM.Size)
	}
	return cfg, nil
}

// Device is the emulated chip in its bootloader.
type Device struct {
	emuwire.Memory
	cfg  Config
	wire *emuwire.Wire
}

// New returns a chip with erased application flash.
func New(cfg Config) *Device {
	wd := cfg.Timeout
	if wd < 0 {
		wd = 0
	}
	d := &Device{cfg: cfg, wire: emuwire.New(emuwire.Config{Watchdog: wd, Baud: cfg.Baud, Pace: cfg.Pace, Faults: cfg.Faults})}
	d.Init("avr109test", cfg.FlashSize, cfg.BootStart, cfg.EEPROM)
	for i := cfg.BootStart; i < cfg.FlashSize; i++ {
		d.Code[i] = byte(i * 13) // stands for Caterina's code
	}
	return d
}

// Reset restarts the chip in its bootloader.
func (d *Device) Reset() { d.wire.Reset() }

// Serve runs the bootloader on rw until ctx ends or rw fails.
func (d *Device) Serve(ctx context.Context, rw io.ReadWriter) error {
	return d.wire.Serve(ctx, rw, d.EndSession, d.caterina)
}

// caterina is Caterina.c's command loop.
func (d *Device) caterina(ctx context.Context) error {
	w := d.wire
	var addr uint32 // a byte address, as Caterina keeps it
	for {
		cmd, err := w.Getch(ctx)
		if err != nil {
			return err
		}
		switch cmd {
		case 'E':
			w.Putch('\r')
			if err := w.Flush(); err != nil {
				return err
			}
			return emuwire.ErrApp
		case 'T':
			if _, err := w.Getch(ctx); err != nil {
				return err
			}
			w.Putch('\r')
		case 'L', 'P':
			w.Putch('\r')
		case 't':
			w.Putch(0x44, 0x00)
		case 'a':
			w.Putch('Y')
		case 'A':
			b, err := w.GetN(ctx, 2)
			if err != nil {
				return err
			}
			addr = uint32(b[0])<<9 | uint32(b[1])<<1
			w.Putch('\r')
		case 'p':
			w.Putch('S')
		case 'S':
			w.Putch([]byte("CATERIN")...)
		case 'V':
			w.Putch('1', '0')
		case 's':
			s := d.cfg.Signature
			w.Putch(s[2], s[1], s[0])
		case 'e':
			d.Mu.Lock()
			for i := 0; i < d.cfg.BootStart; i++ {
				d.Code[i] = 0xff
			}
			d.Mu.Unlock()
			w.Putch('\r')
		case 'b':
			w.Putch('Y', byte(d.cfg.PageSize>>8), byte(d.cfg.PageSize))
		case 'B', 'g':
			b, err := w.GetN(ctx, 3)
			if err != nil {
				return err
			}
			n, mem := int(b[0])<<8|int(b[1]), b[2]
			if mem != 'F' && mem != 'E' {
				w.Putch('?')
				break
			}
			if cmd == 'g' {
				w.Putch(d.read(mem, &addr, n)...)
				break
			}
			data, err := w.GetN(ctx, n)
			if err != nil {
				return err
			}
			d.write(mem, &addr, data)
			w.Putch('\r')
		case 'F', 'N', 'Q', 'r': // fuses and lock bits
			w.Putch(map[byte]byte{'F': 0xff, 'N': 0xd8, 'Q': 0xcb, 'r': 0xef}[cmd])
		case 'l', 'x', 'y':
			if _, err := w.Getch(ctx); err != nil {
				return err
			}
			w.Putch('\r')
		case 27: // ESC: ignored
		default:
			w.Putch('?')
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

// read returns n bytes from addr: flash a byte at a time (the address counts
// words), EEPROM a byte per word address step, as Caterina does.
func (d *Device) read(mem byte, addr *uint32, n int) []byte {
	d.Mu.Lock()
	defer d.Mu.Unlock()
	out := make([]byte, n)
	for i := range out {
		if mem == 'F' {
			a := *addr + uint32(i)
			if int(a) < len(d.Code) {
				out[i] = d.Code[a]
			}
		} else {
			a := (*addr >> 1) + uint32(i)
			if int(a) < len(d.Data) {
				out[i] = d.Data[a]
			}
		}
	}
	if mem == 'F' {
		*addr += uint32(n)
	} else {
		*addr += uint32(2 * n)
	}
	return out
}

// write loads a block: flash pages are erased and then written (writes to
// the bootloader section are ignored, as the 32u4's boot lock bits make
// them), EEPROM bytes written one by one.
func (d *Device) write(mem byte, addr *uint32, data []byte) {
	if mem == 'E' {
		d.Mu.Lock()
		for i, b := range data {
			a := int(*addr>>1) + i
			if a < len(d.Data) {
				d.Data[a] = b
			}
		}
		d.Mu.Unlock()
		*addr += uint32(2 * len(data))
		return
	}
	ps := uint32(d.cfg.PageSize)
	page := *addr / ps * ps
	if d.cfg.Pace {
		time.Sleep(d.cfg.PageTime)
	}
	d.Mu.Lock()
	if int(page) < d.cfg.BootStart {
		for i := uint32(0); i < ps && int(page+i) < len(d.Code); i++ {
			d.Code[page+i] = 0xff
		}
		for i, b := range data {
			a := *addr + uint32(i)
			if int(a) < d.cfg.BootStart {
				d.Code[a] &= b
			}
		}
		d.PageWritten()
	}
	d.Mu.Unlock()
	*addr += uint32(len(data))
}

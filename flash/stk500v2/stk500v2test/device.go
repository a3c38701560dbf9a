package stk500v2test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/internal/emuwire"
	v2 "kiln.dev/kiln/flash/stk500v2"
)

// Faults selects injected faults; see emuwire.Faults. A refused command is
// answered STATUS_CMD_FAILED and not carried out.
type Faults = emuwire.Faults

// Config describes the emulated chip and line.
type Config struct {
	FlashSize int     // bytes, bootloader included (262144)
	PageSize  int     // bytes (256)
	BootStart int     // first byte of the bootloader section (0x3E000)
	AppSize   int     // bytes of the application area, for state files
	Signature [3]byte // 1e 98 01
	EEPROM    int     // bytes (4096)

	// Watchdog is the bootloader's timeout (about 1 s); negative disables it.
	Watchdog time.Duration
	Baud     int
	Pace     bool
	// PageTime is a page write's duration when pacing.
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
		return Config{}, fmt.Errorf("stk500v2test: board %s has no bootloader section", b.Name)
	}
	cfg := Config{
		FlashSize: int(b.Bootloader.End()),
		PageSize:  int(b.Flash.Page),
		BootStart: int(b.Bootloader.Base),
		AppSize:   int(b.Flash.Size),
		Signature: sig,
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

// Mega2560 is an Arduino Mega 2560's ATmega2560 with its bootloader.
func Mega2560() Config {
	b, err := boards.Get("arduino-mega2560")
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
// LEAVE_PROGMODE, a timeout, or the line closing.
type memory = emuwire.Memory

// New returns a chip with erased flash and cfg's faults.
func New(cfg Config) *Device {
	if cfg.Watchdog == 0 {
		cfg.Watchdog = time.Second
	}
	if cfg.AppSize == 0 {
		cfg.AppSize = cfg.BootStart
	}
	wd := max(cfg.Watchdog, 0)
	d := &Device{cfg: cfg, wire: emuwire.New(emuwire.Config{Watchdog: wd, Baud: cfg.Baud, Pace: cfg.Pace, Faults: cfg.Faults})}
	d.Init("stk500v2test", cfg.FlashSize, cfg.AppSize, cfg.EEPROM)
	for i := range d.Code {
		if i >= cfg.BootStart {
			d.Code[i] = byte(i * 13) // stands for the bootloader's code
		}
	}
	return d
}

// Reset pulses the chip's reset pin.
func (d *Device) Reset() { d.wire.Reset() }

// Serve runs the chip on rw until ctx ends or rw fails, starting in the
// bootloader.
func (d *Device) Serve(ctx context.Context, rw io.ReadWriter) error {
	return d.wire.Serve(ctx, rw, d.EndSession, d.bootloader)
}

// appPresent reports whether flash word 0 is programmed.
func (d *Device) appPresent() bool {
	d.Mu.Lock()
	defer d.Mu.Unlock()
	return d.Code[0] != 0xFF || d.Code[1] != 0xFF
}

// bootloader is stk500boot.c's main loop.
func (d *Device) bootloader(ctx context.Context) error {
	w := d.wire
	var address, eraseAddress uint32
	first := true
	getch := func() (byte, error) {
		for {
			c, err := w.Getch(ctx)
			if errors.Is(err, emuwire.ErrWatchdog) && !first && !d.appPresent() {
				// recchar_timeout only leaves for a programmed application.
				w.SetWatchdog(d.cfg.Watchdog)
				continue
			}
			first = false
			return c, err
		}
	}
	for {
		// Collect a frame.
		var seq byte
		var body []byte
		for body == nil {
			c, err := getch()
			if err != nil {
				return err
			}
			if c != v2.MessageStart {
				continue
			}
			sum := byte(v2.MessageStart)
			hdr := make([]byte, 4)
			for i := range hdr {
				if hdr[i], err = getch(); err != nil {
					return err
				}
				sum ^= hdr[i]
			}
			if hdr[3] != v2.Token {
				continue
			}
			size := int(hdr[1])<<8 | int(hdr[2])
			data := make([]byte, size)
			for i := range data {
				if data[i], err = getch(); err != nil {
					return err
				}
				sum ^= data[i]
			}
			c, err = getch()
			if err != nil {
				return err
			}
			if c != sum || size == 0 || size > v2.MaxBody {
				continue // dropped without an answer
			}
			seq, body = hdr[0], data
		}
		var ans []byte
		leave := false
		if w.Nack() {
			ans = []byte{body[0], v2.StatusCmdFailed}
		} else {
			ans, leave = d.process(body, &address, &eraseAddress)
		}
		w.Putch(v2.Encode(seq, ans)...)
		if leave {
			if err := w.Flush(); err != nil {
				return err
			}
			d.EndSession()
			return emuwire.ErrApp
		}
	}
}

func arg(body []byte, i int) byte {
	if i < len(body) {
		return body[i]
	}
	return 0
}

// process carries out one command and returns the answer body.
func (d *Device) process(body []byte, address, eraseAddress *uint32) (ans []byte, leave bool) {
	cmd := body[0]
	ok := byte(v2.StatusCmdOK)
	switch cmd {
	case v2.CmdSPIMulti:
		var answer byte
		switch op := arg(body, 4); {
		case op == 0x30:
			answer = d.cfg.Signature[min(int(arg(body, 6)), 2)]
		case op == 0x50:
			answer = 0xFF // low fuse
		case op == 0x58:
			answer = 0xD8 // high fuse
		}
		return []byte{cmd, ok, 0, arg(body, 4), 0, answer, ok}, false
	case v2.CmdSignOn:
		return append([]byte{cmd, ok, 8}, "AVRISP_2"...), false
	case v2.CmdGetParameter:
		var v byte
		switch arg(body, 1) {
		case v2.ParamHWVersion:
			v = 0x0F
		case v2.ParamSWMajor:
			v = 2
		case v2.ParamSWMinor:
			v = 0x0A
		}
		return []byte{cmd, ok, v}, false
	case v2.CmdLeaveProgmodeISP:
		return []byte{cmd, ok}, true
	case v2.CmdSetParameter, v2.CmdEnterProgmodeISP:
		return []byte{cmd, ok}, false
	case v2.CmdReadSignatureISP:
		return []byte{cmd, ok, d.cfg.Signature[min(int(arg(body, 4)), 2)], ok}, false
	case v2.CmdReadLockISP:
		return []byte{cmd, ok, 0xCF, ok}, false
	case v2.CmdReadFuseISP:
		f := byte(0xD8)
		if arg(body, 2) == 0x50 {
			f = 0xFF
			if arg(body, 3) == 0x08 {
				f = 0xFD
			}
		}
		return []byte{cmd, ok, f, ok}, false
	case v2.CmdChipEraseISP:
		*eraseAddress = 0
		return []byte{cmd, v2.StatusCmdFailed}, false // Arduino issue 543
	case v2.CmdLoadAddress:
		*address = (uint32(arg(body, 1))<<24 | uint32(arg(body, 2))<<16 | uint32(arg(body, 3))<<8 | uint32(arg(body, 4))) << 1
		return []byte{cmd, ok}, false
	case v2.CmdProgramFlashISP, v2.CmdProgramEEPROMISP:
		size := int(arg(body, 1))<<8 | int(arg(body, 2))
		data := make([]byte, size)
		for i := range data {
			data[i] = arg(body, 10+i)
		}
		if cmd == v2.CmdProgramFlashISP {
			d.programPage(address, eraseAddress, data)
		} else {
			d.Mu.Lock()
			for i, b := range data {
				if a := int(*address>>1) + i; a < len(d.Data) {
					d.Data[a] = b
				}
			}
			d.Mu.Unlock()
			*address += uint32(2 * size)
		}
		return []byte{cmd, ok}, false
	case v2.CmdReadFlashISP, v2.CmdReadEEPROMISP:
		size := int(arg(body, 1))<<8 | int(arg(body, 2))
		if size == 0 || size+3 > v2.MaxBody {
			size = min(max(size, 2), v2.MaxBody-3)
		}
		out := []byte{cmd, ok}
		d.Mu.Lock()
		if cmd == v2.CmdReadFlashISP {
			size = (size + 1) &^ 1
			for i := 0; i < size; i++ {
				out = append(out, d.Code[(int(*address)+i)%len(d.Code)])
			}
			*address += uint32(size)
		} else {
			for i := 0; i < size; i++ {
				a := int(*address) + i
				if a < len(d.Data) {
					out = append(out, d.Data[a])
				} else {
					out = append(out, 0xFF)
				}
			}
			*address += uint32(size)
		}
		d.Mu.Unlock()
		return append(out, ok), false
	}
	return []byte{cmd, v2.StatusCmdFailed}, false
}

// programPage erases the page at the erase pointer (not the one written!),
// fills a fresh page buffer from address and programs the page, which can
// only clear bits. The boot section never changes.
func (d *Device) programPage(address, eraseAddress *uint32, data []byte) {
	if d.cfg.Pace && d.cfg.PageTime > 0 {
		time.Sleep(d.cfg.PageTime)
	}
	ps := uint32(d.cfg.PageSize)
	d.Mu.Lock()
	defer d.Mu.Unlock()
	d.PageWritten()
	if *eraseAddress < uint32(d.cfg.BootStart) {
		for i := *eraseAddress; i < *eraseAddress+ps; i++ {
			d.Code[i] = 0xFF
		}
		*eraseAddress += ps
	}
	if len(data)%2 == 1 {
		data = append(data, 0xFF)
	}
	buf := make([]byte, ps)
	for i := range buf {
		buf[i] = 0xFF
	}
	temp := *address
	for i := 0; i < len(data); i += 2 {
		off := (*address) % ps
		buf[off], buf[off+1] = data[i], data[i+1]
		*address += 2
	}
	base := temp % uint32(len(d.Code)) / ps * ps
	if base >= uint32(d.cfg.BootStart) {
		return
	}
	for i := uint32(0); i < ps; i++ {
		d.Code[base+i] &= buf[i]
	}
}

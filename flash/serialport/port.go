package serialport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.bug.st/serial"
	"go.bug.st/serial/enumerator"
	"golang.org/x/sys/unix"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// Timing of the reset pulse (the Arduino auto-reset circuit and Optiboot):
// the line is released for ResetRelease so the capacitor recharges, asserted,
// and the bootloader is given BootWait to start before the first sync.
var (
	ResetRelease = 100 * time.Millisecond
	BootWait     = 100 * time.Millisecond
	GPIOPulse    = 10 * time.Millisecond
)

// Pin is the part of a periph.io gpio.PinOut a reset needs; gpiotest.Pin
// stands in for it in tests.
type Pin interface {
	Out(l gpio.Level) error
}

// Options says how to open a port.
type Options struct {
	Baud int
	// Reset is the board's reset kind ("dtr", "rts", "1200bps", "gpio:NAME",
	// "none"; "" means none).
	Reset string
	// Pins resolves gpio:NAME resets; names not in it are looked up in
	// periph.io's gpioreg.
	Pins map[string]Pin
	// Note receives remarks for the user (a port without modem lines).
	Note flash.Note
}

// Port is an open serial line.
type Port struct {
	name  string
	p     serial.Port
	opts  Options
	pin   Pin
	noted sync.Once
	modem bool
}

// Open opens the serial port at path. A "1200bps" reset touches the port at
// 1200 baud first and waits for it to come back.
func Open(ctx context.Context, path string, opts Options) (*Port, error) {
	if opts.Baud <= 0 {
		opts.Baud = 115200
	}
	pt := &Port{name: path, opts: opts, modem: true}
	switch {
	case strings.HasPrefix(opts.Reset, "gpio:"):
		name := strings.TrimPrefix(opts.Reset, "gpio:")
		if p, ok := opts.Pins[name]; ok {
			pt.pin = p
		} else if p := gpioreg.ByName(name); p != nil {
			pt.pin = p
		} else {
			return nil, fmt.Errorf("serialport: reset pin %q: no such GPIO (is the fixture's GPIO driver loaded?)", name)
		}
	case opts.Reset == "1200bps":
		boot, err := touch1200(ctx, path)
		if err != nil {
			return nil, err
		}
		if boot != path {
			opts.Note.Printf("%s restarted into its bootloader at %s", path, boot)
			path, pt.name = boot, boot
		}
	}
	p, err := serial.Open(path, &serial.Mode{BaudRate: opts.Baud})
	if err != nil {
		if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
			return nil, fmt.Errorf("serialport: open %s: no such port: %w", path, flash.ErrNoDevice)
		}
		return nil, fmt.Errorf("serialport: open %s: %w", path, err)
	}
	pt.p = p
	return pt, nil
}

// Name returns the port's path.
func (p *Port) Name() string { return p.name }

// HasModemLines reports whether DTR and RTS could be set (false on a pty,
// known after the first Reset).
func (p *Port) HasModemLines() bool { return p.modem }

func (p *Port) Read(b []byte) (int, error) {
	n, err := p.p.Read(b)
	if n == 0 && err == nil {
		// go.bug.st/serial returns 0, nil when the port was closed.
		return 0, os.ErrClosed
	}
	return n, err
}

func (p *Port) Write(b []byte) (int, error) { return p.p.Write(b) }

// Close closes the port.
func (p *Port) Close() error { return p.p.Close() }

// noModem reports whether err says the port has no modem lines.
func noModem(err error) bool {
	return errors.Is(err, unix.ENOTTY)
}

// setLines sets DTR and RTS; on a port without modem lines it notes that
// once and returns false.
func (p *Port) setLines(on bool) (bool, error) {
	kind := p.opts.Reset
	var err error
	if kind == "dtr" || kind == "rts" {
		if err = p.p.SetDTR(on); err == nil {
			err = p.p.SetRTS(on)
		}
	}
	if err != nil {
		if noModem(err) {
			p.modem = false
			p.noted.Do(func() {
				p.opts.Note.Printf("port %s has no modem lines (a pseudo-terminal?): kiln cannot reset the board; start its bootloader by hand", p.name)
			})
			return false, nil
		}
		return false, fmt.Errorf("serialport: %s: set DTR/RTS: %w", p.name, err)
	}
	return true, nil
}

// Reset pulses the board's reset line and waits for the bootloader to start.
// On a port without modem lines it does nothing.
func (p *Port) Reset(ctx context.Context) error {
	switch kind := p.opts.Reset; {
	case kind == "dtr" || kind == "rts":
		if !p.modem {
			return nil
		}
		ok, err := p.setLines(false)
		if err != nil || !ok {
			return err
		}
		if err := wait(ctx, ResetRelease); err != nil {
			return err
		}
		if _, err := p.setLines(true); err != nil {
			return err
		}
		if err := wait(ctx, BootWait); err != nil {
			return err
		}
		return p.p.ResetInputBuffer()
	case p.pin != nil:
		if err := p.pin.Out(gpio.Low); err != nil {
			return fmt.Errorf("serialport: reset pin: %w", err)
		}
		if err := wait(ctx, GPIOPulse); err != nil {
			return err
		}
		if err := p.pin.Out(gpio.High); err != nil {
			return fmt.Errorf("serialport: reset pin: %w", err)
		}
		return wait(ctx, BootWait)
	}
	return nil
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// touch1200 opens the port at 1200 baud and closes it: boards with a native
// USB port (the ATmega32u4's Caterina) restart into their bootloader, which
// enumerates as a port of its own. It returns the bootloader's port: one that
// appeared after the touch, else path once it has gone and come back, else
// path if it never went away (a pty, an adapter that does not re-enumerate).
func touch1200(ctx context.Context, path string) (string, error) {
	before := portSet()
	p, err := serial.Open(path, &serial.Mode{BaudRate: 1200})
	if err != nil {
		return "", fmt.Errorf("serialport: 1200 bps touch of %s: %w", path, err)
	}
	_ = p.SetDTR(false)
	p.Close()
	start := time.Now()
	gone := false
	for {
		if err := wait(ctx, 50*time.Millisecond); err != nil {
			return "", err
		}
		for name := range portSet() {
			if !before[name] && name != path {
				return name, nil
			}
		}
		_, err := os.Stat(path)
		switch {
		case err != nil:
			gone = true
		case gone || time.Since(start) > time.Second:
			return path, nil
		}
		if time.Since(start) > 8*time.Second {
			return "", fmt.Errorf("serialport: %s did not come back after the 1200 bps touch, and no new port appeared: %w", path, flash.ErrNoDevice)
		}
	}
}

// portSet names the serial ports ListPorts sees now.
func portSet() map[string]bool {
	set := map[string]bool{}
	ports, _ := ListPorts()
	for _, p := range ports {
		set[p.Name] = true
	}
	return set
}

// ListPorts lists the serial ports; tests replace it.
var ListPorts = enumerator.GetDetailedPortsList

// Find resolves "auto" and "usb:SERIAL" to a port path. "auto" wants exactly
// one USB serial port whose VID:PID is in the board file; none is
// flash.ErrNoDevice, several is an error that lists them with their serial
// numbers.
func Find(b *boards.Board, spec string) (string, error) {
	ports, err := ListPorts()
	if err != nil {
		return "", fmt.Errorf("serialport: list ports: %w", err)
	}
	if serialNo, ok := strings.CutPrefix(spec, "usb:"); ok {
		for _, p := range ports {
			if p.IsUSB && p.SerialNumber == serialNo {
				return p.Name, nil
			}
		}
		return "", fmt.Errorf("serialport: no USB serial port with serial number %q: %w", serialNo, flash.ErrNoDevice)
	}
	if spec != "auto" {
		return "", fmt.Errorf("serialport: %q is not auto or usb:SERIAL", spec)
	}
	ids, err := b.USBIDs()
	if err != nil {
		return "", err
	}
	var match []*enumerator.PortDetails
	for _, p := range ports {
		if !p.IsUSB {
			continue
		}
		for _, id := range ids {
			if strings.EqualFold(p.VID, fmt.Sprintf("%04x", id[0])) && strings.EqualFold(p.PID, fmt.Sprintf("%04x", id[1])) {
				match = append(match, p)
				break
			}
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("serialport: no USB serial port with %s's ids (%s): %w", b.Name, strings.Join(b.USB, ", "), flash.ErrNoDevice)
	case 1:
		return match[0].Name, nil
	}
	sort.Slice(match, func(i, j int) bool { return match[i].Name < match[j].Name })
	var list []string
	for _, p := range match {
		sn := p.SerialNumber
		if sn == "" {
			sn = "no serial number"
		}
		list = append(list, fmt.Sprintf("%s (%s:%s, %s)", p.Name, p.VID, p.PID, sn))
	}
	return "", fmt.Errorf("serialport: %d ports could be %s: %s; pick one with --port usb:SERIAL or a path", len(match), b.Name, strings.Join(list, "; "))
}

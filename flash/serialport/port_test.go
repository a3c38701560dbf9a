package serialport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/creack/pty"
	"go.bug.st/serial/enumerator"
	"periph.io/x/conn/v3/gpio"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// A pseudo-terminal opens like a serial port; its missing modem lines are a
// note, not an error, and bytes pass both ways.
func TestPTYHasNoModemLines(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	var notes []string
	p, err := Open(context.Background(), tty.Name(), Options{Baud: 115200, Reset: "dtr", Note: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 2; i++ {
		if err := p.Reset(context.Background()); err != nil {
			t.Fatalf("reset on a pty: %v", err)
		}
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "has no modem lines") || p.HasModemLines() {
		t.Fatalf("notes %q, modem %v", notes, p.HasModemLines())
	}
	if _, err := p.Write([]byte{0x30, 0x20}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := ptmx.Read(buf); err != nil || buf[0] != 0x30 {
		t.Fatalf("pty master read % x, %v", buf, err)
	}
	ptmx.Write([]byte{0x14, 0x10})
	if n, err := p.Read(buf); err != nil || n == 0 || buf[0] != 0x14 {
		t.Fatalf("port read % x, %v", buf[:n], err)
	}
}

func TestOpenMissingPortIsNoDevice(t *testing.T) {
	_, err := Open(context.Background(), "/dev/kiln-no-such-tty", Options{})
	if !errors.Is(err, flash.ErrNoDevice) {
		t.Fatalf("err = %v", err)
	}
}

// Every periph.io output pin (a host's GPIO, gpiotest.Pin) is a Pin.
var _ Pin = gpio.PinOut(nil)

// recordPin remembers every level it was driven to. (periph's gpiotest.Pin
// would do, but it pulls in a module kiln does not otherwise need.)
type recordPin struct {
	L      gpio.Level
	levels []gpio.Level
}

func (r *recordPin) Out(l gpio.Level) error {
	r.levels = append(r.levels, l)
	r.L = l
	return nil
}

func TestGPIOResetPulsesLowThenHigh(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	pin := &recordPin{}
	p, err := Open(context.Background(), tty.Name(), Options{Reset: "gpio:NRST", Pins: map[string]Pin{"NRST": pin}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Reset(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(pin.levels) != 2 || pin.levels[0] != gpio.Low || pin.levels[1] != gpio.High || pin.L != gpio.High {
		t.Fatalf("levels %v", pin.levels)
	}
	if _, err := Open(context.Background(), tty.Name(), Options{Reset: "gpio:NOPE"}); err == nil || !strings.Contains(err.Error(), `reset pin "NOPE"`) {
		t.Fatalf("unknown pin: %v", err)
	}
}

func TestFind(t *testing.T) {
	uno, err := boards.Get("arduino-uno")
	if err != nil {
		t.Fatal(err)
	}
	orig := ListPorts
	defer func() { ListPorts = orig }()
	ports := []*enumerator.PortDetails{
		{Name: "/dev/ttyS0"},
		{Name: "/dev/ttyUSB0", IsUSB: true, VID: "0403", PID: "6001", SerialNumber: "A50285BI"},
		{Name: "/dev/ttyACM0", IsUSB: true, VID: "2341", PID: "0043", SerialNumber: "85036313530351D0"},
		{Name: "/dev/ttyACM1", IsUSB: true, VID: "0483", PID: "374B", SerialNumber: "0671FF"},
	}
	ListPorts = func() ([]*enumerator.PortDetails, error) { return ports, nil }

	// Two candidates (an FTDI adapter and an Uno): an error naming both.
	_, err = Find(uno, "auto")
	if err == nil || !strings.Contains(err.Error(), "/dev/ttyACM0 (2341:0043, 85036313530351D0)") || !strings.Contains(err.Error(), "/dev/ttyUSB0 (0403:6001, A50285BI)") {
		t.Fatalf("several: %v", err)
	}
	if p, err := Find(uno, "usb:85036313530351D0"); err != nil || p != "/dev/ttyACM0" {
		t.Fatalf("usb:SERIAL: %q %v", p, err)
	}
	if _, err := Find(uno, "usb:nope"); !errors.Is(err, flash.ErrNoDevice) {
		t.Fatalf("usb:nope: %v", err)
	}
	ports = ports[2:]
	if p, err := Find(uno, "auto"); err != nil || p != "/dev/ttyACM0" {
		t.Fatalf("one: %q %v", p, err)
	}
	ports = ports[1:]
	if _, err := Find(uno, "auto"); !errors.Is(err, flash.ErrNoDevice) || !strings.Contains(err.Error(), "2341:0043") {
		t.Fatalf("none: %v", err)
	}
}

// The 1200 bps touch opens and closes the port at 1200 baud, then waits for
// the port to be there again; on a pty it is there at once.
func TestTouch1200(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	p, err := Open(context.Background(), tty.Name(), Options{Reset: "1200bps"})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if _, err := Open(context.Background(), "/dev/kiln-no-such-tty", Options{Reset: "1200bps"}); err == nil || !strings.Contains(err.Error(), "1200 bps touch") {
		t.Fatalf("missing port: %v", err)
	}
}

// A board whose bootloader enumerates as a new port after the touch (a
// Leonardo's Caterina under another USB product ID): Open ends up on the new
// port and says so.
func TestTouch1200NewPort(t *testing.T) {
	app, appTTY, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	defer appTTY.Close()
	boot, bootTTY, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Close()
	defer bootTTY.Close()
	calls := 0
	ListPorts = func() ([]*enumerator.PortDetails, error) {
		calls++
		if calls == 1 { // before the touch: only the sketch's port
			return []*enumerator.PortDetails{{Name: appTTY.Name(), IsUSB: true, VID: "2341", PID: "8036"}}, nil
		}
		return []*enumerator.PortDetails{{Name: bootTTY.Name(), IsUSB: true, VID: "2341", PID: "0036"}}, nil
	}
	defer func() { ListPorts = enumerator.GetDetailedPortsList }()
	var notes []string
	p, err := Open(context.Background(), appTTY.Name(), Options{Reset: "1200bps", Note: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Name() != bootTTY.Name() || len(notes) != 1 || !strings.Contains(notes[0], "bootloader at "+bootTTY.Name()) {
		t.Fatalf("port %s, notes %q: want the bootloader's new port %s", p.Name(), notes, bootTTY.Name())
	}
	p.Write([]byte("S"))
	buf := make([]byte, 1)
	if _, err := boot.Read(buf); err != nil || buf[0] != 'S' {
		t.Fatalf("the byte went elsewhere: %q %v", buf, err)
	}
}

package boards

import (
	"errors"
	"strings"
	"testing"
)

func TestEveryShippedBoardLoads(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"arduino-leonardo", "arduino-mega2560", "arduino-micro", "arduino-nano", "arduino-nano-old", "arduino-pro-mini-3v3", "arduino-pro-mini-5v", "arduino-uno", "bluepill", "nucleo-f401re", "rpi-3b", "rpi-4b", "rpi-zero-2w"}
	if len(all) != len(want) {
		t.Fatalf("got %d boards, want %d", len(all), len(want))
	}
	for i, b := range all {
		if b.Name != want[i] {
			t.Errorf("board %d is %q, want %q", i, b.Name, want[i])
		}
	}
}

func TestInheritance(t *testing.T) {
	nano, err := Get("arduino-nano")
	if err != nil {
		t.Fatal(err)
	}
	if nano.MCU != "atmega328p" || nano.Flash.Size != 32256 || nano.Protocol != "stk500v1" {
		t.Errorf("nano did not inherit from uno: %+v", nano)
	}
	if len(nano.USB) != 2 || nano.USB[0] != "0403:6001" {
		t.Errorf("nano usb = %v", nano.USB)
	}
	sig, _ := nano.AVRSignature()
	if sig != [3]byte{0x1e, 0x95, 0x0f} {
		t.Errorf("signature %x", sig)
	}
}

func TestUnknownBoard(t *testing.T) {
	_, err := Get("arduino-unoo")
	if !errors.Is(err, ErrUnknown) {
		t.Fatalf("err = %v, want ErrUnknown", err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]string{
		"bad arch":     "name='x'\narch='z80'\nprotocol='stk500v1'",
		"overlap":      "name='x'\narch='avr'\nmcu='m'\ncpu_hz=1\nbaud=1\nsignature='1e950f'\nprotocol='stk500v1'\nflash={base=0,size=1024,page=128}\nbootloader={base=512,size=512}",
		"bad toml":     "name='x\n",
		"unknown key":  "name='x'\narch='avr'\ncolour='red'",
		"bad usb":      "name='x'\narch='aarch64'\ndtb='d'\nprotocol='ssh'\nusb=['zz']",
		"bad reset":    "name='x'\narch='aarch64'\ndtb='d'\nprotocol='ssh'\nreset='magic'",
		"bad protocol": "name='x'\narch='aarch64'\ndtb='d'\nprotocol='jtag'",
	}
	for name, src := range cases {
		if _, err := Parse("t.toml", []byte(src), nil); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "t.toml") {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	_, err := Parse("t.toml", []byte("name='x\n"), nil)
	if !strings.Contains(err.Error(), "t.toml:1:") {
		t.Errorf("toml error lacks line:column: %v", err)
	}
}

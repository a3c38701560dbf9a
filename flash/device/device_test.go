package device_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
)

func board(t *testing.T, name string) *boards.Board {
	t.Helper()
	b, err := boards.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenEmulatorProgramsAndIdentifies(t *testing.T) {
	for _, name := range []string{"arduino-uno", "arduino-mega2560"} {
		b := board(t, name)
		s, err := device.Open(context.Background(), "emu:"+name, b, "", device.Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		img, _ := flash.NewImage("t", flash.Segment{Addr: 0, Data: []byte("kiln writes this and reads it back")})
		res, err := flash.Program(context.Background(), s, img, nil)
		if err != nil || !res.Verified {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		if !strings.HasPrefix(s.Identity(), "avr signature "+b.Signature) {
			t.Errorf("%s: identity %q", name, s.Identity())
		}
		if err := s.Close(); err != nil {
			t.Errorf("%s: close: %v", name, err)
		}
	}
}

func TestOpenRefusals(t *testing.T) {
	uno := board(t, "arduino-uno")
	ctx := context.Background()
	if _, err := device.Open(ctx, "emu:arduino-uno", uno, "stm32-uart", device.Options{}); err == nil || !strings.Contains(err.Error(), "arduino-uno does not speak stm32-uart") {
		t.Errorf("foreign protocol: %v", err)
	}
	if _, err := device.Open(ctx, "dfu:0483:df11", uno, "", device.Options{}); err == nil || !strings.Contains(err.Error(), "is a USB DFU device") {
		t.Errorf("dfu spec on a serial board: %v", err)
	}
	if _, err := device.Open(ctx, "/dev/kiln-no-such-tty", uno, "", device.Options{}); !errors.Is(err, flash.ErrNoDevice) {
		t.Errorf("missing port: %v", err)
	}
	if _, err := device.Open(ctx, "emu:no-such-board", uno, "", device.Options{}); !errors.Is(err, boards.ErrUnknown) {
		t.Errorf("unknown emulated board: %v", err)
	}
	// The Nano is the Uno's chip: its emulator passes the signature check.
	s, err := device.Open(ctx, "emu:arduino-nano", uno, "", device.Options{})
	if err != nil {
		t.Fatalf("emu:arduino-nano as an uno: %v", err)
	}
	s.Close()
}

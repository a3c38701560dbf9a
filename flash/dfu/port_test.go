package dfu

import (
	"context"
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/flash"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
	}{
		{"dfu:", Port{Scheme: "dfu"}},
		{"dfu:0483:df11", Port{Scheme: "dfu", VID: 0x0483, PID: 0xdf11, HasID: true}},
		{"dfu:0x0483:0xDF11,serial=3276365D3032", Port{Scheme: "dfu", VID: 0x0483, PID: 0xdf11, HasID: true, Serial: "3276365D3032"}},
		{"dfu:,serial=ABC", Port{Scheme: "dfu", Serial: "ABC"}},
	} {
		got, err := ParsePort(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, _ := ParsePort(got.String()); again != got {
			t.Errorf("%q does not round-trip: %q", tc.in, got.String())
		}
	}
	for _, bad := range []string{"usb:", "dfu:0483", "dfu:0483:zz11", "dfu:12345:1", "dfu:0483:df11,serial=", "dfu:0483:df11,bus=1"} {
		if _, err := ParsePort(bad); err == nil {
			t.Errorf("ParsePort(%q) accepted", bad)
		}
	}
	p, _ := ParsePort("dfu:0483:df11,serial=A")
	if !p.Match(0x0483, 0xdf11, "A") || p.Match(0x0483, 0xdf11, "B") || p.Match(0x0483, 0xdf12, "A") {
		t.Error("Match")
	}
}

// f401Config is the configuration descriptor of an STM32F401 in its ROM
// bootloader as the DFU 1.1 and USB 2.0 specifications lay it out: one
// interface, four alternate settings (strings 4..7), a DFU functional
// descriptor with wTransferSize 2048 and bcdDFUVersion 1.1a.
var f401Config = []byte{
	9, 2, 54, 0, 1, 1, 0, 0xc0, 0x32,
	9, 4, 0, 0, 0, 0xfe, 1, 2, 4,
	9, 4, 0, 1, 0, 0xfe, 1, 2, 5,
	9, 4, 0, 2, 0, 0xfe, 1, 2, 6,
	9, 4, 0, 3, 0, 0xfe, 1, 2, 7,
	9, 0x21, 0x0b, 0xff, 0, 0x00, 0x08, 0x1a, 0x01,
}

func TestParseConfig(t *testing.T) {
	d, err := parseConfig(f401Config)
	if err != nil {
		t.Fatal(err)
	}
	if d.Number != 0 || len(d.Alts) != 4 || d.Strings[3] != 7 || d.TransferSize != 2048 || d.Version != 0x011a || d.Attributes != 0x0b {
		t.Fatalf("%+v", d)
	}
	if _, err := parseConfig(f401Config[:9]); err == nil {
		t.Error("a configuration without a DFU interface was accepted")
	}
	if _, err := parseConfig([]byte{9, 2, 54, 0, 1, 1, 0, 0xc0, 0x32, 0, 4}); err == nil {
		t.Error("a zero-length descriptor was accepted")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(f401Config)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseConfig(b)
		if err == nil && len(d.Alts) != len(d.Strings) {
			t.Fatal("alts and strings differ in number")
		}
	})
}

// TestOpenNoDevice runs the real libusb path: this machine has no DFU
// device, so Open must say so and wrap flash.ErrNoDevice.
func TestOpenNoDevice(t *testing.T) {
	for _, port := range []string{"dfu:", "dfu:0483:df11", "dfu:0483:df11,serial=NOPE"} {
		tg, err := Open(context.Background(), port)
		if err == nil {
			tg.Close()
			t.Skipf("a DFU device is attached (%s): this test needs none", port)
		}
		if !errors.Is(err, flash.ErrNoDevice) || !strings.Contains(err.Error(), "no DFU device found") {
			t.Fatalf("Open(%q) = %v; want \"no DFU device found\" wrapping flash.ErrNoDevice", port, err)
		}
		t.Log(err)
	}
	if _, err := Open(context.Background(), "dfu:zz"); err == nil || errors.Is(err, flash.ErrNoDevice) {
		t.Errorf("bad port: %v", err)
	}
}

package device_test

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/stm32"
	"kiln.dev/kiln/flash/stm32/stm32test"
)

// pending are protocols a board file names whose back end is being built
// elsewhere; each must go from here when its entry lands (the test fails
// when an entry exists and the name is still listed).
var pending = map[string]string{}

// inProcessLess are table entries whose device model is not an in-process
// emulator; each names where its model lives.
var inProcessLess = map[string]string{
	"ssh":      "flash/ssh/sshtest runs real sshd devices in network namespaces",
	"blockdev": "flash/blockdev's tests write loop devices",
}

// Every protocol any board file names has a back end, and every back end
// has an emulator: a new back end cannot land half-plugged.
func TestBackendTable(t *testing.T) {
	all, err := boards.All()
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, b := range all {
		for _, p := range b.Protocols {
			named[p] = true
			be, err := device.Lookup(p)
			if err != nil {
				if pending[p] == "" {
					t.Errorf("board %s names protocol %s, which has no back end in flash/device's table", b.Name, p)
				}
				continue
			}
			if !resetAllowed(be, b.Reset) {
				t.Errorf("board %s: reset %q is not one of %s's reset kinds %v", b.Name, b.Reset, p, be.Resets)
			}
		}
	}
	for _, p := range boards.KnownProtocols() {
		if _, err := device.Lookup(p); err != nil && pending[p] == "" {
			t.Errorf("boards accepts protocol %s, which has no back end", p)
		}
	}
	for p := range pending {
		if _, err := device.Lookup(p); err == nil {
			t.Errorf("protocol %s has landed in the table: remove it from pending", p)
		}
	}
	for _, be := range device.Backends() {
		if be.Emulate == nil && be.OpenEmulator == nil && inProcessLess[be.Protocol] == "" {
			t.Errorf("back end %s has no emulator", be.Protocol)
		}
		if be.Connect == nil && be.Open == nil && be.OpenDisk == nil {
			t.Errorf("back end %s can be neither opened nor connected", be.Protocol)
		}
		if !named[be.Protocol] {
			t.Errorf("back end %s is used by no board file", be.Protocol)
		}
		if len(be.Resets) == 0 {
			t.Errorf("back end %s lists no reset kinds", be.Protocol)
		}
	}
	if _, err := device.Lookup("xmodem"); !errors.Is(err, device.ErrUnsupported) {
		t.Errorf("unknown protocol: %v", err)
	}
}

func resetAllowed(be *device.Backend, reset string) bool {
	if reset == "" {
		return true
	}
	for _, r := range be.Resets {
		if r == reset || (strings.HasSuffix(r, ":") && strings.HasPrefix(reset, r)) {
			return true
		}
	}
	return false
}

// A port spec with a back end's prefix picks it; a board that does not
// speak it is refused with the protocol it does speak.
func TestResolve(t *testing.T) {
	nucleo := board(t, "nucleo-f401re")
	for port, want := range map[string]string{"dfu:0483:df11": "dfuse", "DFU:": "dfuse", "/dev/ttyACM0": "dfuse", "emu:nucleo-f401re": "dfuse"} {
		be, err := device.Resolve(port, nucleo, "")
		if err != nil || be.Protocol != want {
			t.Errorf("%s: %v %v, want %s", port, be, err, want)
		}
	}
	if be, err := device.Resolve("/dev/ttyUSB0", nucleo, "stm32-uart"); err != nil || be.Protocol != "stm32-uart" {
		t.Errorf("--protocol stm32-uart: %v %v", be, err)
	}
	pi := board(t, "rpi-4b")
	if be, err := device.Resolve("SSH://pi@host/dev/sda", pi, ""); err != nil || be.OpenDisk == nil {
		t.Errorf("ssh port: %v %v", be, err)
	}
	if be, err := device.DiskBackend("ssh://pi@host/dev/sda"); err != nil || be == nil || be.Protocol != "ssh" {
		t.Errorf("ssh disk: %v %v", be, err)
	}
	if be, err := device.DiskBackend("/dev/ttyUSB0"); be != nil || err != nil {
		t.Errorf("a serial port is a disk: %v %v", be, err)
	}
	if _, err := device.DiskBackend("ssh://pi@host"); !errors.Is(err, device.ErrBadPort) {
		t.Errorf("ssh port without a block device: %v", err)
	}
	for _, p := range []string{"/dev/sda", "/dev/mmcblk0", "blockdev:/dev/disk/by-id/usb-Card_Reader-0:0", "/dev/loop7"} {
		if be, err := device.DiskBackend(p); err != nil || be == nil || be.Protocol != "blockdev" {
			t.Errorf("%s is not a local disk", p)
		}
		if be, err := device.Resolve(p, pi, ""); err != nil || be.Protocol != "blockdev" {
			t.Errorf("%s on a Pi: %v %v", p, be, err)
		}
	}
	if _, err := device.Resolve("ssh://pi@host/dev/sda", board(t, "arduino-uno"), ""); err == nil || !strings.Contains(err.Error(), "device reached over SSH") {
		t.Errorf("ssh port for an uno: %v", err)
	}
}

// STM32 chip families are one table: every stm32-uart board's product ID
// is in it, the emulator takes its family from it, and an unknown ID is
// an error in the client's table and in the emulator alike.
func TestSTM32Families(t *testing.T) {
	all, err := boards.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range all {
		if !b.Supports("stm32-uart") {
			continue
		}
		pid, err := b.ProductID()
		if err != nil {
			t.Fatal(err)
		}
		fam, err := stm32.FamilyOf(pid)
		if err != nil {
			t.Errorf("board %s: %v", b.Name, err)
			continue
		}
		d, err := stm32test.New(b)
		if err != nil || d.Family() != fam.Name {
			t.Errorf("board %s: emulator family %v %v, want %s", b.Name, d, err, fam.Name)
		}
	}
	if _, err := stm32.FamilyOf(0x999); !errors.Is(err, stm32.ErrUnknownChip) {
		t.Errorf("unknown product ID: %v", err)
	}
	odd := *board(t, "bluepill")
	odd.Name, odd.Signature = "odd-stm32", "0x999"
	if _, err := stm32test.New(&odd); !errors.Is(err, stm32.ErrUnknownChip) {
		t.Errorf("emulator of an unknown product ID: %v", err)
	}
}

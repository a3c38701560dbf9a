package trust

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A policy with board rules cannot be side-stepped by leaving the board
// out, or by spelling a port another way.
func TestPolicyFailsClosed(t *testing.T) {
	release, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	src := `[[key]]
name = "release"
public_key = "` + release.Public().String() + `"

[[rule]]
boards = ["rpi-*"]
require_signature = true

[[rule]]
ports = ["ssh://*@robot-*/dev/*", "/dev/ttyUSB*"]
require_signature = true
`
	p, err := ParsePolicy([]byte(src), "policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	link := filepath.Join(dir, "by-id-usb-FTDI")
	if err := os.Symlink("/dev/ttyUSB7", link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		t    Target
		want bool
	}{
		{"board unknown: board rules apply", Target{Port: "ssh://pi@10.0.0.5/dev/sda"}, true},
		{"board known, not selected", Target{Board: "arduino-uno", Port: "/dev/ttyACM0"}, false},
		{"board known, selected", Target{Board: "rpi-4b", Port: "ssh://pi@10.0.0.5/dev/sda"}, true},
		{"port upper-case scheme and host", Target{Board: "bluepill", Port: "SSH://pi@ROBOT-7/dev/sda"}, true},
		{"port with doubled slashes", Target{Board: "bluepill", Port: "/dev//ttyUSB0"}, true},
		{"port through a symlink", Target{Board: "bluepill", Port: link}, true},
		{"port not selected", Target{Board: "bluepill", Port: "/dev/ttyACM0"}, false},
	} {
		if got := p.For(c.t).Signed; got != c.want {
			t.Errorf("%s: signature required = %v, want %v", c.name, got, c.want)
		}
		_, err := p.Check(c.t, "fw.bin", bytes.NewReader([]byte("x")), nil)
		if c.want != errors.Is(err, ErrUntrusted) {
			t.Errorf("%s: unsigned artifact: %v", c.name, err)
		}
	}
	if got := CanonicalPorts("SSH://Pi@Robot-7:2222/dev/SDA"); got[0] != "ssh://Pi@robot-7:2222/dev/SDA" {
		t.Errorf("canonical: %q", got)
	}
}

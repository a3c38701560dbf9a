package trust

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPolicyCheck(t *testing.T) {
	release, _ := GenerateKey(nil)
	lab, _ := GenerateKey(nil)
	stranger, _ := GenerateKey(nil)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "lab.pub"), lab.Public().Encode())
	src := `
[[key]]
name = "release"
public_key = "` + release.Public().String() + `"

[[key]]
name = "lab"
file = "lab.pub"

[[rule]]
boards = ["arduino-*"]
require_signature = true

[[rule]]
groups = ["production"]
require_signature = true
keys = ["release"]
`
	pf := filepath.Join(dir, "policy.toml")
	writeFile(t, pf, []byte(src))
	p, err := LoadPolicy(pf)
	if err != nil {
		t.Fatal(err)
	}
	data := firmware()
	signed := func(k *SecretKey, d []byte) []byte {
		s, _, err := SignArtifact(k, bytes.NewReader(d), "fw.hex", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Encode()
	}
	changed := append([]byte(nil), data...)
	changed[10] ^= 1
	uno := Target{Board: "arduino-uno", Port: "emu:arduino-uno"}
	prod := Target{Board: "arduino-uno", Group: "production", Port: "/dev/ttyACM0"}
	bluepill := Target{Board: "bluepill", Port: "/dev/ttyUSB0"}
	cases := []struct {
		name    string
		target  Target
		data    []byte
		sig     []byte
		wantErr error
		wantKey string
	}{
		{"unsigned, required", uno, data, nil, ErrUntrusted, ""},
		{"signed by release", uno, data, signed(release, data), nil, "release"},
		{"signed by lab", uno, data, signed(lab, data), nil, "lab"},
		{"signed by a stranger", uno, data, signed(stranger, data), ErrWrongKey, ""},
		{"changed after signing", uno, changed, signed(release, data), ErrBadSignature, ""},
		{"garbage signature", uno, data, []byte("not a signature"), ErrMalformed, ""},
		{"production needs release", prod, data, signed(lab, data), ErrWrongKey, ""},
		{"production with release", prod, data, signed(release, data), nil, "release"},
		{"not required, unsigned", bluepill, data, nil, nil, ""},
		{"not required, bad signature still refused", bluepill, changed, signed(release, data), ErrBadSignature, ""},
		{"not required, good signature", bluepill, data, signed(lab, data), nil, "lab"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := p.Check(c.target, "fw.hex", bytes.NewReader(c.data), c.sig)
			if c.wantErr != nil {
				if !errors.Is(err, ErrUntrusted) || !errors.Is(err, c.wantErr) {
					t.Fatalf("got %v, want ErrUntrusted and %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.KeyName != c.wantKey {
				t.Fatalf("key %q, want %q", d.KeyName, c.wantKey)
			}
			if c.wantKey != "" && (!d.Signed || d.Claims == nil || d.Claims.File != "fw.hex") {
				t.Fatalf("decision %+v", d)
			}
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	k, _ := GenerateKey(nil)
	good := `public_key = "` + k.Public().String() + `"`
	cases := map[string]string{
		"unknown field":        "[[key]]\nname = \"a\"\n" + good + "\ncolour = \"red\"\n",
		"no keys but required": "[default]\nrequire_signature = true\n",
		"unknown rule key":     "[[key]]\nname = \"a\"\n" + good + "\n[[rule]]\nkeys = [\"b\"]\n",
		"duplicate key":        "[[key]]\nname = \"a\"\n" + good + "\n[[key]]\nname = \"a\"\n" + good + "\n",
		"bad key":              "[[key]]\nname = \"a\"\npublic_key = \"RWQ\"\n",
		"empty pattern":        "[[key]]\nname = \"a\"\n" + good + "\n[[rule]]\nports = [\"\"]\n",
	}
	for name, src := range cases {
		if _, err := ParsePolicy([]byte(src), "p.toml"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadPolicy(filepath.Join(t.TempDir(), "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if p, err := ParsePolicy([]byte("[[key]]\nname = \"a\"\n"+good+"\n"), "p.toml"); err != nil || !strings.Contains(strings.Join(p.KeyNames(), ","), "a") {
		t.Errorf("good policy: %v", err)
	}
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pat, s string
		want   bool
	}{
		{"ssh://*", "ssh://root@10.0.0.7:22/dev/mmcblk0", true},
		{"/dev/ttyUSB*", "/dev/ttyUSB0", true},
		{"/dev/ttyUSB*", "/dev/ttyACM0", false},
		{"arduino-*", "arduino-uno", true},
		{"arduino-*", "bluepill", false},
		{"emu:*", "emu:arduino-uno", true},
		{"rpi-?b", "rpi-4b", true},
		{"rpi-?b", "rpi-zero-2w", false},
		{"*-uno", "arduino-uno", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"exact", "exact", true},
		{"exact", "exactly", false},
	} {
		if got := glob(c.pat, c.s); got != c.want {
			t.Errorf("glob(%q, %q) = %v", c.pat, c.s, got)
		}
	}
}

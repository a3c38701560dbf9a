package debian_test

import (
	"bytes"
	"errors"
	"os"
	"path"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/debian"
)

// seedLock is a real lock kiln wrote (image/rootfs's 27-package fixture).
func seedLock(t testing.TB) []byte {
	data, err := os.ReadFile("../../image/rootfs/testdata/small.lock")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestParseLockRefuses: a rootfs.lock is hostile input (it comes with a
// recipe): each way one can be wrong is ErrLock, naming what is wrong.
func TestParseLockRefuses(t *testing.T) {
	good := seedLock(t)
	if _, err := debian.ParseLock(good); err != nil {
		t.Fatalf("the fixture lock: %v", err)
	}
	first := `"name": "gcc-12-base"`
	for _, c := range []struct{ name, old, new, want string }{
		{"unknown field", `"format": 1,`, `"format": 1, "hooks": "rm -rf /",`, "unknown field"},
		{"other format", `"format": 1,`, `"format": 2,`, "format 2"},
		{"no resolution time", `"resolved": "2026-12-03T18:42:27Z",`, ``, "no resolution time"},
		{"request edited", `"dpkg",`, `"dpkg", "evil",`, "request_hash"},
		{"bad name", first, `"name": "gcc 12"`, "bad name"},
		{"bad version", `"version": "12.2.0-14+deb12u1"`, `"version": "12 2"`, "bad version"},
		{"bad arch", `"arch": "arm64",
      "sha256"`, `"arch": "arm64/../x",
      "sha256"`, "bad arch"},
		{"bad sha256", `"sha256": "674cf6cba6d432bd200c45fe866c1652c7a53523cc2e7a613e05bc4abf7b5440"`, `"sha256": "674CF6"`, "sha256"},
		{"size zero", `"size": 37624`, `"size": 0`, "size 0"},
		{"escaping filename", `"filename": "pool/main/g/gcc-12/gcc-12-base_12.2.0-14+deb12u1_arm64.deb"`, `"filename": "../../etc/shadow.deb"`, "not a .deb path inside"},
		{"absolute filename", `"filename": "pool/main/g/gcc-12/gcc-12-base_12.2.0-14+deb12u1_arm64.deb"`, `"filename": "/etc/x.deb"`, "not a .deb path inside"},
		{"not a .deb", `"filename": "pool/main/g/gcc-12/gcc-12-base_12.2.0-14+deb12u1_arm64.deb"`, `"filename": "pool/main/g/gcc-12/x.sh"`, "not a .deb path inside"},
		{"listed twice", `"name": "libc6"`, `"name": "gcc-12-base"`, "listed twice"},
		{"truncated", "", "", "unexpected EOF"},
	} {
		data := []byte(strings.Replace(string(good), c.old, c.new, 1))
		if c.name == "truncated" {
			data = good[:len(good)/2]
		} else if bytes.Equal(data, good) {
			t.Fatalf("%s: the edit %q did not apply", c.name, c.old)
		}
		if _, err := debian.ParseLock(data); !errors.Is(err, debian.ErrLock) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrLock saying %q", c.name, err, c.want)
		}
	}
}

// FuzzParseLock: whatever the bytes, ParseLock refuses them with ErrLock or
// returns a lock whose every package has a valid name, a sha256 and a
// filename inside its repository, and whose canonical text parses back to
// the same text.
func FuzzParseLock(f *testing.F) {
	good := seedLock(f)
	f.Add(good)
	l, err := debian.ParseLock(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(l.Marshal())
	f.Add([]byte(`{"format":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := debian.ParseLock(data)
		if err != nil {
			if !errors.Is(err, debian.ErrLock) {
				t.Fatalf("error without ErrLock: %v", err)
			}
			return
		}
		for _, p := range l.Packages {
			clean := path.Clean(p.Filename)
			if len(p.SHA256) != 64 || p.Size <= 0 || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
				t.Fatalf("accepted package %+v", p)
			}
		}
		text := l.Marshal()
		back, err := debian.ParseLock(text)
		if err != nil {
			t.Fatalf("canonical text of an accepted lock refused: %v\n%s", err, text)
		}
		if !bytes.Equal(back.Marshal(), text) {
			t.Fatalf("canonical text does not round-trip:\n%s\n%s", text, back.Marshal())
		}
	})
}

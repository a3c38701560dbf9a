package fetch

import (
	"errors"
	"path"
	"strings"
	"testing"

	"kiln.dev/kiln/recipes"
)

// showBash is apt-cache show --no-all-versions output as bookworm's apt
// prints it (fields cut), with a second record after it.
const showBash = `Package: bash
Source: bash (5.2.15-2)
Version: 5.2.15-2+b13
Architecture: arm64
Tag: admin::TODO, devel::TODO,
 interface::shell, role::program
Filename: pool/main/b/bash/bash_5.2.15-2+b13_arm64.deb
Size: 1490652
SHA256: 82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1

Package: bash
Version: 5.1-2
Filename: pool/main/b/bash/bash_5.1-2_arm64.deb
SHA256: 0000000000000000000000000000000000000000000000000000000000000000
`

const urisBash = `'http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb13_arm64.deb' bash_5.2.15-2+b13_arm64.deb 1490652 SHA256:82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1
`

// TestShowRecord: the record a pin moves to is read from apt-cache show's
// first stanza; a record that would put something other than a Debian
// version, a sha256 or a clean pool path into a recipe is ErrAPT, and no
// record is ErrNotInArchive.
func TestShowRecord(t *testing.T) {
	d, err := recipes.ParseDebSource("deb:bash:arm64=5.1-2@bookworm/main")
	if err != nil {
		t.Fatal(err)
	}
	p, err := showRecord(showBash, d)
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != "5.2.15-2+b13" || p.Size != 1490652 || p.Source != "deb:bash:arm64=5.2.15-2+b13@bookworm/main" ||
		p.SHA256 != "82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1" || p.Filename != "pool/main/b/bash/bash_5.2.15-2+b13_arm64.deb" {
		t.Errorf("pin %+v", p)
	}
	uri, err := printedURI(urisBash, p.Filename)
	if err != nil || uri != "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2+b13_arm64.deb" {
		t.Errorf("uri %q, %v", uri, err)
	}
	if _, err := showRecord("", d); !errors.Is(err, ErrNotInArchive) {
		t.Errorf("no record: %v", err)
	}
	for _, c := range []struct{ from, to, why string }{
		{"Package: bash\n", "Package: dash\n", "incomplete"},
		{"SHA256: 82130", "SHA256: \"0130", "sha256"},
		{"SHA256: 82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1\n", "SHA256: 82130bb6\n", "sha256"},
		{"Version: 5.2.15-2+b13\n", "Version: 5.2@x/y\n", "not a Debian version"},
		{"Version: 5.2.15-2+b13\n", "Version: 5.2 \"x\n", "not a Debian version"},
		{"Filename: pool/", "Filename: ../../pool/", "pool path"},
		{"Filename: pool/", "Filename: /pool/", "pool path"},
		{"Size: 1490652", "Size: -1", "size"},
	} {
		_, err := showRecord(strings.Replace(showBash, c.from, c.to, 1), d)
		if !errors.Is(err, ErrAPT) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s → %s: %v", c.from, c.to, err)
		}
	}
	if _, err := printedURI("E: Can't select versions from package 'bash' as it is purely virtual\n", p.Filename); !errors.Is(err, ErrAPT) {
		t.Errorf("no URI: %v", err)
	}
	if _, err := printedURI(strings.Replace(urisBash, "b13_arm64.deb'", "b13_arm64.deb.evil'", 1), p.Filename); !errors.Is(err, ErrAPT) {
		t.Errorf("URI of another file: %v", err)
	}
}

// FuzzShowRecord: any apt-cache show and apt-get --print-uris output is
// refused by sentinel (ErrNotInArchive, ErrAPT) or gives a pin whose every
// field a recipe takes is sound: the asked package, a deb: source that
// parses back to the same name, architecture and version, a 64-hex sha256,
// a clean relative pool path (a flat repository's "./" allowed), and a URI naming that pool file.
func FuzzShowRecord(f *testing.F) {
	f.Add(showBash, urisBash)
	f.Add("Package: bash\nVersion: 1:2.0~rc1-1\nFilename: pool/main/b/bash/bash_2.0~rc1-1_all.deb\nSHA256: "+strings.Repeat("A", 64)+"\n", "'http://x/pool/main/b/bash/bash_2.0~rc1-1_all.deb' f 1 SHA256:x\n")
	f.Add("Package: bash\nVersion: 1\nFilename: pool/a\nSHA256: "+strings.Repeat("0", 64)+"\nSize: x\n", "")
	f.Add("\n\nPackage:bash\n Version: 1\n", "'%zz' a\n")
	d, err := recipes.ParseDebSource("deb:bash:arm64=5.1-2@bookworm/main")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, show, uris string) {
		p, err := showRecord(show, d)
		if err != nil {
			if !errors.Is(err, ErrNotInArchive) && !errors.Is(err, ErrAPT) {
				t.Fatalf("error %v is neither ErrNotInArchive nor ErrAPT", err)
			}
			return
		}
		back, err := recipes.ParseDebSource(p.Source)
		if err != nil || back.Name != d.Name || back.Arch != d.Arch || back.Version != p.Version || p.Name != d.Name ||
			strings.Join(back.Suites, ",") != "bookworm" || strings.Join(back.Components, ",") != "main" {
			t.Fatalf("pin %+v: source parses as %+v, %v", p, back, err)
		}
		if !sha256RE.MatchString(p.SHA256) || p.Size < 0 {
			t.Fatalf("pin %+v: sha256 or size", p)
		}
		rel := strings.TrimPrefix(p.Filename, "./")
		if rel == "" || path.Clean(rel) != rel || path.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") || strings.ContainsAny(rel, " \t\"'") {
			t.Fatalf("pin %+v: filename", p)
		}
		uri, err := printedURI(uris, p.Filename)
		if err != nil {
			if !errors.Is(err, ErrAPT) {
				t.Fatalf("error %v is not ErrAPT", err)
			}
			return
		}
		if path.Base(uri) != path.Base(p.Filename) {
			t.Fatalf("URI %q for %s", uri, p.Filename)
		}
	})
}

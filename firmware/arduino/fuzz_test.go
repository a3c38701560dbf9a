package arduino_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"kiln.dev/kiln/firmware/arduino"
)

// FuzzParseProps: a properties file (platform.txt, boards.txt,
// library.properties) either fails with ErrBadPlatform or parses into
// unique keys whose key=value lines parse back to the same map, and
// expanding any value terminates.
func FuzzParseProps(f *testing.F) {
	f.Add([]byte("name=Servo\nversion=1.2.1\r\n# comment\narchitectures=avr, sam\n"))
	f.Add([]byte("recipe.c.o.pattern=\"{compiler.path}{compiler.c.cmd}\" {compiler.c.flags} -mmcu={build.mcu}\ncompiler.path={runtime.tools.avr-gcc.path}/bin/\ntools.avrdude.cmd.path.linux={path}/bin/avrdude\na={b}\nb={a}\n"))
	f.Add([]byte("no equals sign"))
	f.Add([]byte("=empty key\n\r\r x = y \n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, keys, err := arduino.ParseProps("fuzz.txt", data)
		if err != nil {
			if !errors.Is(err, arduino.ErrBadPlatform) {
				t.Fatalf("error %v is not ErrBadPlatform", err)
			}
			return
		}
		if len(keys) != len(p) {
			t.Fatalf("%d keys listed for %d properties", len(keys), len(p))
		}
		seen := map[string]bool{}
		var b strings.Builder
		for _, k := range keys {
			if seen[k] {
				t.Fatalf("key %q listed twice", k)
			}
			seen[k] = true
			if strings.Contains(k, ".linux") {
				return // the host suffix is stripped once per parse: no round trip
			}
			b.WriteString(k + "=" + p[k] + "\n")
			p.Expand(p[k])
		}
		q, keys2, err := arduino.ParseProps("again.txt", []byte(b.String()))
		if err != nil {
			t.Fatalf("re-parsing the parsed properties: %v", err)
		}
		if len(q) != len(p) || strings.Join(keys2, "\x00") != strings.Join(keys, "\x00") {
			t.Fatalf("round trip changed the keys: %q -> %q", keys, keys2)
		}
		for k, v := range p {
			if q[k] != v {
				t.Fatalf("round trip changed %q: %q -> %q", k, v, q[k])
			}
		}
	})
}

// FuzzSplitCommand: splitting a recipe never yields an empty argument,
// and without quotes it is exactly a split on spaces.
func FuzzSplitCommand(f *testing.F) {
	f.Add(`"/usr/bin/avr-g++" -c -g -Os "-I/a b/c" '-DX="1"' -o "x.o"`)
	f.Add(`" a`)
	f.Add(`'' "" x`)
	f.Fuzz(func(t *testing.T, s string) {
		args, err := arduino.SplitCommand(s)
		if err != nil {
			return
		}
		for _, a := range args {
			if a == "" {
				t.Fatalf("%q: empty argument in %q", s, args)
			}
		}
		if !strings.ContainsAny(s, `"'`) {
			var want []string
			for _, w := range strings.Split(s, " ") {
				if w = strings.TrimSpace(w); w != "" {
					want = append(want, w)
				}
			}
			if strings.Join(args, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("%q split as %q, want %q", s, args, want)
			}
		}
	})
}

// FuzzLoadLibrary: any library.properties gives a library or
// ErrBadLibrary; a loaded library has architectures and its headers.
func FuzzLoadLibrary(f *testing.F) {
	f.Add([]byte("name=Servo\nversion=1.2.1\narchitectures=avr,megaavr,sam\ndot_a_linkage=true\nprecompiled=full\n"), true)
	f.Add([]byte("name=X\narchitectures=\n"), false)
	f.Add([]byte("broken"), false)
	dir := f.TempDir()
	n := 0
	f.Fuzz(func(t *testing.T, props []byte, src bool) {
		n++
		lib := filepath.Join(dir, "lib", "L"+strings.Repeat("x", n%3))
		os.RemoveAll(lib)
		hdrDir := lib
		if src {
			hdrDir = filepath.Join(lib, "src")
		}
		if err := os.MkdirAll(hdrDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(lib, "library.properties"), props, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(hdrDir, "L.h"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := arduino.LoadLibrary(lib, "user")
		if err != nil {
			if !errors.Is(err, arduino.ErrBadLibrary) {
				t.Fatalf("error %v is not ErrBadLibrary", err)
			}
			return
		}
		if len(l.Archs) == 0 {
			t.Fatal("a loaded library has no architectures")
		}
		if l.Recursive != src {
			t.Fatalf("src/ layout %v read as recursive=%v", src, l.Recursive)
		}
		if !sort.StringsAreSorted(l.Headers) || len(l.Headers) != 1 || l.Headers[0] != "L.h" {
			t.Fatalf("headers %q, want [L.h]", l.Headers)
		}
		l.CompatibleWith("avr")
	})
}

package fetch

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/internal/store"
)

// debs are real Debian packages, downloaded once per test run with the
// host's apt client (TestMain), for comparing kiln's unpacker with dpkg-deb.
var debs = map[string]string{
	"arduino-core-avr": "1.8.7+dfsg-1~deb12u1",       // data only, deep tree
	"binutils-avr":     "2.26.20160125+Atmel3.6.2-4", // executables, hardlinks
	"zlib1g":           "1:1.2.13.dfsg-1",            // shared library, symlinks, /lib
}

// benchDebs are bigger packages for the benchmark only.
var benchDebs = map[string]string{
	"gcc-avr": "1:5.4.0+Atmel3.6.2-3",
}

var debDir string // where TestMain put them

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-fetch-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	debDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// realDeb downloads a package of debs (once) and returns the .deb's path.
func realDeb(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(debDir, name)
	if m, _ := filepath.Glob(filepath.Join(dir, "*.deb")); len(m) == 1 {
		return m[0]
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get does not exist on this platform")
	}
	os.MkdirAll(dir, 0o755)
	version := debs[name]
	if version == "" {
		version = benchDebs[name]
	}
	cmd := exec.Command("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", name+"="+version)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download %s: %v\n%s", name, err, out)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(m) != 1 {
		t.Fatalf("apt-get download left %v", m)
	}
	return m[0]
}

// treeListing describes every file of a tree: type, permission bits (no
// set-id bits), content hash or link target.
func treeListing(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, fmt.Sprintf("%s -> %s", rel, target))
		case fi.IsDir():
			out = append(out, fmt.Sprintf("%s/ %04o", rel, fi.Mode().Perm()))
		default:
			sum, err := store.HashFile(p)
			if err != nil {
				return err
			}
			out = append(out, fmt.Sprintf("%s %04o %s", rel, fi.Mode().Perm(), sum))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func diffListings(t *testing.T, what string, want, got []string) {
	t.Helper()
	w := map[string]bool{}
	for _, l := range want {
		w[l] = true
	}
	g := map[string]bool{}
	for _, l := range got {
		g[l] = true
	}
	n := 0
	for _, l := range want {
		if !g[l] && n < 10 {
			t.Errorf("%s: dpkg-deb has %q, kiln does not", what, l)
			n++
		}
	}
	for _, l := range got {
		if !w[l] && n < 10 {
			t.Errorf("%s: kiln has %q, dpkg-deb does not", what, l)
			n++
		}
	}
}

func dpkgX(t *testing.T, deb string) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb does not exist on this platform")
	}
	dir := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	return dir
}

func kilnX(t *testing.T, deb string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unpackDebFile(deb, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestUnpackDebMatchesDpkgDeb unpacks real Debian packages with kiln and
// with dpkg-deb -x and compares every path, type, mode, content and target.
func TestUnpackDebMatchesDpkgDeb(t *testing.T) {
	for name := range debs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			deb := realDeb(t, name)
			kdir := kilnX(t, deb)
			want, got := treeListing(t, dpkgX(t, deb)), treeListing(t, kdir)
			if len(want) < 5 {
				t.Fatalf("dpkg-deb unpacked only %d paths", len(want))
			}
			diffListings(t, name, want, got)
			if name == "binutils-avr" { // its ld.bfd is a hardlink to ld
				a, err1 := os.Stat(filepath.Join(kdir, "usr/lib/avr/bin/ld"))
				b, err2 := os.Stat(filepath.Join(kdir, "usr/lib/avr/bin/ld.bfd"))
				if err1 != nil || err2 != nil || !os.SameFile(a, b) {
					t.Errorf("ld.bfd is not a hardlink of ld (%v, %v)", err1, err2)
				}
			}
		})
	}
}

// buildDeb makes a .deb from a tree with the real dpkg-deb -b.
func buildDeb(t *testing.T, tree, compression string) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb does not exist on this platform")
	}
	os.MkdirAll(filepath.Join(tree, "DEBIAN"), 0o755)
	control := "Package: kiln-test\nVersion: 1.0\nArchitecture: all\nMaintainer: kiln <kiln@example.org>\nDescription: test\n"
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(t.TempDir(), "kiln-test.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Z"+compression, "-b", tree, deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb -b: %v\n%s", err, out)
	}
	os.RemoveAll(filepath.Join(tree, "DEBIAN"))
	return deb
}

// sampleTree writes files of every kind a package has.
func sampleTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"usr/bin/tool":                      "#!/bin/sh\necho tool\n",
		"usr/share/doc/kiln/README":         "read me\n",
		"usr/lib/x86_64-linux-gnu/l.so.1.0": strings.Repeat("\x7fELF", 1000),
		"etc/kiln.conf":                     "",
		"usr/sbin/setuid-tool":              "#!/bin/sh\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o755)
	os.Chmod(filepath.Join(dir, "usr/sbin/setuid-tool"), 0o4755)
	os.Chmod(filepath.Join(dir, "usr/share/doc/kiln/README"), 0o600)
	os.Symlink("l.so.1.0", filepath.Join(dir, "usr/lib/x86_64-linux-gnu/l.so.1"))
	os.Symlink("/usr/bin/tool", filepath.Join(dir, "usr/bin/abs-link"))
	os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool-hardlink"))
	os.MkdirAll(filepath.Join(dir, "var/empty"), 0o700)
	return dir
}

// TestUnpackEveryCompression: .debs built by dpkg-deb with each compression
// it offers unpack exactly as dpkg-deb -x unpacks them (but set-id bits).
func TestUnpackEveryCompression(t *testing.T) {
	tree := sampleTree(t)
	for _, c := range []string{"xz", "gzip", "zstd", "none"} {
		t.Run(c, func(t *testing.T) {
			deb := buildDeb(t, tree, c)
			members, _ := exec.Command("ar", "t", deb).Output()
			t.Logf("members: %s", strings.Fields(string(members)))
			want, got := treeListing(t, dpkgX(t, deb)), treeListing(t, kilnX(t, deb))
			for i, l := range want { // kiln drops set-id bits; dpkg-deb -x as root keeps them
				want[i] = strings.Replace(l, "setuid-tool 4755", "setuid-tool 0755", 1)
				// kiln rewrites an absolute symlink to resolve inside the
				// unpacked tree (inRoot); dpkg-deb -x keeps /usr/bin/tool,
				// which outside a chroot names the host's file.
				want[i] = strings.Replace(want[i], "usr/bin/abs-link -> /usr/bin/tool", "usr/bin/abs-link -> tool", 1)
			}
			diffListings(t, c, want, got)
			if len(got) != 20 {
				t.Errorf("%d paths: %q", len(got), got)
			}
		})
	}
}

// arFile is one member for makeAr.
type arFile struct {
	name string
	data []byte
}

// makeAr writes a common-format ar archive.
func makeAr(members ...arFile) []byte {
	var b bytes.Buffer
	b.WriteString(arMagic)
	for _, m := range members {
		fmt.Fprintf(&b, "%-16s%-12d%-6d%-6d%-8o%-10d`\n", m.name+"/", 0, 0, 0, 0o644, len(m.data))
		b.Write(m.data)
		if len(m.data)%2 == 1 {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

type tarEntry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
}

func makeTar(t testing.TB, entries ...tarEntry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

func debOf(tarData []byte) []byte {
	return makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"control.tar", nil}, arFile{"data.tar", tarData})
}

// TestUnpackRefuses: archives that would write outside the tree, through a
// symlink, or make device nodes are refused, and nothing lands outside.
func TestUnpackRefuses(t *testing.T) {
	reg := byte(tar.TypeReg)
	cases := map[string][]tarEntry{
		"dot-dot":              {{name: "./../escape", typ: reg, body: "x"}},
		"deep dot-dot":         {{name: "./usr/../../escape", typ: reg, body: "x"}},
		"through symlink":      {{name: "./lnk", link: "..", typ: tar.TypeSymlink}, {name: "./lnk/escape", typ: reg, body: "x"}},
		"through abs symlink":  {{name: "./lnk", link: "/tmp", typ: tar.TypeSymlink}, {name: "./lnk/escape", typ: reg, body: "x"}},
		"dir through symlink":  {{name: "./lnk", link: "..", typ: tar.TypeSymlink}, {name: "./lnk/sub/", typ: tar.TypeDir}},
		"hardlink outside":     {{name: "./h", link: "../outside", typ: tar.TypeLink}},
		"hardlink via symlink": {{name: "./lnk", link: "..", typ: tar.TypeSymlink}, {name: "./h", link: "./lnk/outside", typ: tar.TypeLink}},
		"hardlink to nothing":  {{name: "./h", link: "./nothing", typ: tar.TypeLink}},
		"device":               {{name: "./dev-null", typ: tar.TypeChar}},
		"fifo":                 {{name: "./fifo", typ: tar.TypeFifo}},
		"conflicting file":     {{name: "./f", typ: reg, body: "a"}, {name: "./f", typ: reg, body: "b"}},
		"file over symlink":    {{name: "./f", link: "/etc/passwd", typ: tar.TypeSymlink}, {name: "./f", typ: reg, body: "b"}},
		"symlink over file":    {{name: "./f", typ: reg, body: "b"}, {name: "./f", link: "x", typ: tar.TypeSymlink}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			os.WriteFile(outside, []byte("keep"), 0o644)
			dir := filepath.Join(base, "tree")
			os.Mkdir(dir, 0o755)
			err := UnpackDeb(bytes.NewReader(debOf(makeTar(t, entries...))), dir)
			if !errors.Is(err, ErrBadArchive) {
				t.Errorf("err = %v, want ErrBadArchive", err)
			}
			ents, _ := os.ReadDir(base)
			if len(ents) != 2 {
				t.Errorf("something was written outside the tree: %v", ents)
			}
			if b, _ := os.ReadFile(outside); string(b) != "keep" {
				t.Errorf("outside file changed: %q", b)
			}
		})
	}
	t.Run("same file twice is fine", func(t *testing.T) {
		dir := t.TempDir()
		tr := makeTar(t, tarEntry{name: "./a/f", typ: reg, body: "same"}, tarEntry{name: "./a/f", typ: reg, body: "same"},
			tarEntry{name: "./abs/x", typ: reg, body: "y"}, tarEntry{name: "/abs2/y", typ: reg, body: "z"})
		if err := UnpackDeb(bytes.NewReader(debOf(tr)), dir); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "abs2", "y")); string(b) != "z" {
			t.Errorf("an absolute name did not land inside the tree: %q", b)
		}
	})
}

func TestUnpackBadDebs(t *testing.T) {
	good := makeTar(t, tarEntry{name: "./f", typ: tar.TypeReg, body: "x"})
	cases := map[string][]byte{
		"empty":          nil,
		"not ar":         []byte("PK\x03\x04 a zip file, not a deb"),
		"no data":        makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"control.tar", nil}),
		"wrong first":    makeAr(arFile{"control.tar", nil}, arFile{"debian-binary", []byte("2.0\n")}),
		"format 3":       makeAr(arFile{"debian-binary", []byte("3.0\n")}, arFile{"data.tar", good}),
		"unknown comp":   makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"data.tar.lz4", good}),
		"bad xz":         makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"data.tar.xz", good}),
		"truncated":      debOf(good)[:len(debOf(good))-600],
		"bad size":       []byte(arMagic + "debian-binary/  0           0     0     100644  -4        `\n"),
		"bad terminator": []byte(arMagic + "debian-binary/  0           0     0     100644  4         X\n2.0\n"),
		"truncated tar":  makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"data.tar", good[:300]}),
	}
	for name, data := range cases {
		err := UnpackDeb(bytes.NewReader(data), t.TempDir())
		if !errors.Is(err, ErrBadArchive) {
			t.Errorf("%s: err = %v, want ErrBadArchive", name, err)
		}
	}
}

// FuzzArReader: the ar reader never panics, never returns more data than a
// member's size, and stops.
func FuzzArReader(f *testing.F) {
	f.Add(makeAr(arFile{"debian-binary", []byte("2.0\n")}, arFile{"data.tar", []byte("odd")}))
	f.Add([]byte(arMagic))
	f.Add([]byte(arMagic + "x/              0           0     0     100644  99999999999`\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := newArReader(bytes.NewReader(data))
		for i := 0; i < 1000; i++ {
			h, err := a.Next()
			if err != nil {
				return
			}
			n, err := io.Copy(io.Discard, a)
			if n > h.Size {
				t.Fatalf("member %q: read %d bytes of %d", h.Name, n, h.Size)
			}
			if err == nil && n != h.Size {
				t.Fatalf("member %q: short read %d of %d without an error", h.Name, n, h.Size)
			}
		}
	})
}

// BenchmarkUnpackDebVsDpkgDeb unpacks gcc-avr (15 MB .deb, 68 MB of files)
// with kiln (Go: ar, xz, tar) and with dpkg-deb -x, in the same run.
func BenchmarkUnpackDebVsDpkgDeb(b *testing.B) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		b.Skip("dpkg-deb does not exist on this platform")
	}
	deb := realDeb(b, "gcc-avr")
	// kiln as it runs (data.tar.xz through the system's xz), kiln's
	// fallback where there is no xz (ulikunitz/xz), dpkg-deb -x.
	unpackers := []func(dir string) error{
		func(dir string) error { return unpackDebFile(deb, dir) },
		func(dir string) error {
			f, err := os.Open(deb)
			if err != nil {
				return err
			}
			defer f.Close()
			return unpackDeb(bufio.NewReaderSize(f, 1<<16), dir, false)
		},
		func(dir string) error {
			if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
				return fmt.Errorf("dpkg-deb -x: %v %s", err, out)
			}
			return nil
		},
	}
	var wall, cpu [3]time.Duration
	for i := 0; i < b.N; i++ {
		for j, unpack := range unpackers {
			dir := b.TempDir()
			c0 := cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN)
			t0 := time.Now()
			if err := unpack(dir); err != nil {
				b.Fatal(err)
			}
			wall[j] += time.Since(t0)
			cpu[j] += cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN) - c0
		}
	}
	n := time.Duration(b.N)
	ratio := wall[0].Seconds() / wall[2].Seconds()
	cpuRatio := cpu[0].Seconds() / cpu[2].Seconds()
	msg := fmt.Sprintf("kiln/dpkg-deb = %.2fx, CPU %.2fx (per unpack of gcc-avr: kiln %v CPU %v, dpkg-deb -x %v CPU %v; kiln without xz (ulikunitz/xz) %v CPU %v: %.2fx, CPU %.2fx)",
		ratio, cpuRatio, wall[0]/n, cpu[0]/n, wall[2]/n, cpu[2]/n, wall[1]/n, cpu[1]/n,
		wall[1].Seconds()/wall[2].Seconds(), cpu[1].Seconds()/cpu[2].Seconds())
	b.Log(msg)
	fmt.Println("BenchmarkUnpackDebVsDpkgDeb: " + msg)
	b.ReportMetric(ratio, "kiln/dpkg-deb")
	// On a loaded machine the wall-clock ratio is mostly the load's; the
	// CPU time (user + system of each side's processes, xz and dpkg-deb's
	// tar included) is what each costs.
	b.ReportMetric(cpuRatio, "kiln/dpkg-deb-cpu")
}

// cpuTime is the user + system time of this process (RUSAGE_SELF) or of
// its waited-for descendants (RUSAGE_CHILDREN).
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// FuzzUnpackTar: whatever the archive, nothing is written outside the tree.
func FuzzUnpackTar(f *testing.F) {
	reg := byte(tar.TypeReg)
	f.Add(makeTar(f, tarEntry{name: "./a/b", typ: reg, body: "x"}, tarEntry{name: "./a/c", link: "b", typ: tar.TypeSymlink}))
	f.Add(makeTar(f, tarEntry{name: "./l", link: "..", typ: tar.TypeSymlink}, tarEntry{name: "./l/x", typ: reg, body: "x"}))
	f.Add(makeTar(f, tarEntry{name: "./h", link: "../outside", typ: tar.TypeLink}))
	f.Add(makeTar(f, tarEntry{name: "./d/", typ: tar.TypeDir}, tarEntry{name: "./d/../../x", typ: reg, body: "x"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		outside := filepath.Join(base, "outside")
		os.WriteFile(outside, []byte("keep"), 0o644)
		dir := filepath.Join(base, "tree")
		os.Mkdir(dir, 0o755)
		UnpackTar(bytes.NewReader(data), dir) // errors are fine; escapes are not
		ents, _ := os.ReadDir(base)
		if len(ents) != 2 {
			t.Fatalf("something was written outside the tree: %v", ents)
		}
		if b, _ := os.ReadFile(outside); string(b) != "keep" {
			t.Fatalf("outside file changed: %q", b)
		}
		if fi, err := os.Lstat(outside); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
			t.Fatalf("outside file replaced or re-moded: %v %v", fi, err)
		}
	})
}

// TestUnpackXZSystemAndGo: a data.tar.xz decoded by the system's xz and
// by ulikunitz/xz (the fallback where there is no xz) unpacks to the same
// tree; a stream damaged anywhere, even in the footer past the last file
// or cut short, is ErrBadArchive either way.
func TestUnpackXZSystemAndGo(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Fatalf("xz is not installed (make deps installs it): %v", err)
	}
	deb, err := os.ReadFile(buildDeb(t, sampleTree(t), "xz"))
	if err != nil {
		t.Fatal(err)
	}
	unpack := func(data []byte, systemXZ bool) (string, error) {
		dir := t.TempDir()
		return dir, unpackDeb(bytes.NewReader(data), dir, systemXZ)
	}
	sys, err := unpack(deb, true)
	if err != nil {
		t.Fatal(err)
	}
	goDir, err := unpack(deb, false)
	if err != nil {
		t.Fatal(err)
	}
	diffListings(t, "system xz vs ulikunitz/xz", treeListing(t, goDir), treeListing(t, sys))

	// The data.tar.xz member, the last one, and what ends it.
	i := bytes.Index(deb, []byte("data.tar.xz"))
	if i < 0 {
		t.Fatal("no data.tar.xz member")
	}
	var ar []arFile
	a := newArReader(bytes.NewReader(deb))
	for {
		h, err := a.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(a)
		ar = append(ar, arFile{h.Name, data})
	}
	xzData := ar[len(ar)-1].data
	damaged := map[string][]byte{}
	flip := func(at int) []byte {
		d := bytes.Clone(xzData)
		d[at] ^= 0x40
		return d
	}
	damaged["footer check"] = flip(len(xzData) - 12) // CRC32 of the stream footer
	damaged["index"] = flip(len(xzData) - 20)
	damaged["middle"] = flip(len(xzData) / 2)
	damaged["cut short"] = xzData[:len(xzData)-8]
	for name, d := range damaged {
		members := append(append([]arFile{}, ar[:len(ar)-1]...), arFile{"data.tar.xz", d})
		for _, systemXZ := range []bool{true, false} {
			if _, err := unpack(makeAr(members...), systemXZ); !errors.Is(err, ErrBadArchive) {
				t.Errorf("%s (system xz %v): err = %v, want ErrBadArchive", name, systemXZ, err)
			}
		}
	}
}

// Package debtest builds real Debian packages and repositories for tests:
// dpkg-deb builds each .deb and dpkg-scanpackages writes the index, so apt
// and mmdebstrap read them as they read Debian's own.
package debtest

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Deb describes one binary package.
type Deb struct {
	Name, Version string
	Arch          string            // default "arm64"
	Source        string            // "" for the package's own name
	Fields        map[string]string // Depends, Pre-Depends, Provides, Essential, Priority, ...
	Files         map[string]string // path (no leading slash) → content
	Scripts       map[string]string // preinst, postinst, ... → script text
}

// FileName is the pool file name dpkg-deb would choose (no epoch).
func (d Deb) FileName() string {
	v := d.Version
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after
	}
	return d.Name + "_" + v + "_" + d.arch() + ".deb"
}

func (d Deb) arch() string {
	if d.Arch == "" {
		return "arm64"
	}
	return d.Arch
}

// Need skips the test when a program is missing (the Makefile installs it).
func Need(t testing.TB, progs ...string) {
	t.Helper()
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (make deps installs it)", p)
		}
	}
}

// Build writes d as a .deb into dir and returns its path.
func Build(t testing.TB, dir string, d Deb) string {
	t.Helper()
	Need(t, "dpkg-deb")
	root := t.TempDir()
	ctl := filepath.Join(root, "DEBIAN")
	must(t, os.MkdirAll(ctl, 0o755))
	var c strings.Builder
	fmt.Fprintf(&c, "Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: kiln tests <tests@kiln.invalid>\n", d.Name, d.Version, d.arch())
	if d.Source != "" {
		fmt.Fprintf(&c, "Source: %s\n", d.Source)
	}
	keys := make([]string, 0, len(d.Fields))
	for k := range d.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&c, "%s: %s\n", k, d.Fields[k])
	}
	fmt.Fprintf(&c, "Description: %s, a kiln test package\n", d.Name)
	must(t, os.WriteFile(filepath.Join(ctl, "control"), []byte(c.String()), 0o644))
	for name, s := range d.Scripts {
		must(t, os.WriteFile(filepath.Join(ctl, name), []byte(s), 0o755))
	}
	for p, content := range d.Files {
		full := filepath.Join(root, filepath.FromSlash(p))
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		must(t, os.WriteFile(full, []byte(content), 0o644))
	}
	out := filepath.Join(dir, d.FileName())
	must(t, os.MkdirAll(dir, 0o755))
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, out)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build %s: %v\n%s", d.Name, err, b)
	}
	return out
}

// Repo writes a repository at dir for suite/component main: every deb in
// pool/main/<letter>/<source>/ and dists/SUITE/main/binary-ARCH/Packages
// (no Release file: add it with trusted=yes). Calling it again with other
// debs replaces the suite's index, as an archive update does.
func Repo(t testing.TB, dir, suite string, debs []Deb) {
	t.Helper()
	Need(t, "dpkg-scanpackages")
	archs := map[string]bool{}
	for _, d := range debs {
		src := d.Source
		if src == "" {
			src = d.Name
		}
		src, _, _ = strings.Cut(src, " ")
		pool := filepath.Join(dir, "pool", "main", src[:1], src)
		if _, err := os.Stat(filepath.Join(pool, d.FileName())); err != nil {
			Build(t, pool, d)
		}
		archs[d.arch()] = true
	}
	archs["arm64"] = true
	for arch := range archs {
		var want []string
		for _, d := range debs {
			if d.arch() == arch || d.arch() == "all" {
				src := d.Source
				if src == "" {
					src = d.Name
				}
				src, _, _ = strings.Cut(src, " ")
				want = append(want, filepath.ToSlash(filepath.Join("pool", "main", src[:1], src, d.FileName())))
			}
		}
		if arch == "all" {
			continue
		}
		idx := filepath.Join(dir, "dists", suite, "main", "binary-"+arch)
		must(t, os.MkdirAll(idx, 0o755))
		// dpkg-scanpackages names files relative to the directory it
		// scans (given a file, it prints an absolute path): scan the
		// pool, keep this index's files.
		cmd := exec.Command("dpkg-scanpackages", "-m", "-a", arch, "pool")
		cmd.Dir = dir
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("dpkg-scanpackages: %v", err)
		}
		keep := map[string]bool{}
		for _, w := range want {
			keep[w] = true
		}
		var packages strings.Builder
		for _, stanza := range strings.Split(string(b), "\n\n") {
			for _, l := range strings.Split(stanza, "\n") {
				if f, ok := strings.CutPrefix(l, "Filename: "); ok && keep[f] {
					packages.WriteString(strings.TrimSpace(stanza) + "\n\n")
				}
			}
		}
		must(t, os.WriteFile(filepath.Join(idx, "Packages"), []byte(packages.String()), 0o644))
	}
	writeRelease(t, filepath.Join(dir, "dists", suite), suite)
}

// writeRelease writes an unsigned Release file listing every index of the
// suite with its size and sha256, so apt's ?archive and ?codename patterns
// see the suite.
func writeRelease(t testing.TB, dist, suite string) {
	t.Helper()
	var archs []string
	var sums strings.Builder
	err := filepath.WalkDir(dist, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "Packages" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dist, p)
		fmt.Fprintf(&sums, " %x %d %s\n", sha256.Sum256(b), len(b), filepath.ToSlash(rel))
		archs = append(archs, strings.TrimPrefix(filepath.Base(filepath.Dir(p)), "binary-"))
		return nil
	})
	must(t, err)
	sort.Strings(archs)
	rel := fmt.Sprintf("Origin: kiln-test\nLabel: kiln-test\nSuite: %s\nCodename: %s\nDate: Sun, 01 Dec 2026 00:00:00 UTC\nArchitectures: %s\nComponents: main\nSHA256:\n%s",
		suite, suite, strings.Join(archs, " "), sums.String())
	must(t, os.WriteFile(filepath.Join(dist, "Release"), []byte(rel), 0o644))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

package debian_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/debian/debtest"
)

// testDebs is a small archive with what makes apt's resolver work:
// versioned dependencies, a virtual package with two providers,
// alternatives, Pre-Depends, an Essential set and an unrelated package.
func testDebs() []debtest.Deb {
	return []debtest.Deb{
		{Name: "base-files", Version: "12.4", Fields: map[string]string{"Essential": "yes", "Priority": "required"}},
		{Name: "kiln-libc", Version: "2.36-9", Source: "kiln-glibc", Fields: map[string]string{"Priority": "required"}},
		{Name: "kiln-shell", Version: "5.2-1", Fields: map[string]string{"Essential": "yes", "Pre-Depends": "kiln-libc (>= 2.36)"}},
		{Name: "kiln-app", Version: "1:1.0-1", Fields: map[string]string{"Depends": "kiln-lib (>= 2), kiln-mta | kiln-mail-transport-agent"}},
		{Name: "kiln-lib", Version: "2.0-1", Fields: map[string]string{"Depends": "kiln-libc"}},
		{Name: "kiln-mta", Version: "4.96-1", Fields: map[string]string{"Provides": "kiln-mail-transport-agent"}},
		{Name: "kiln-other-mta", Version: "1.0-1", Fields: map[string]string{"Provides": "kiln-mail-transport-agent"}},
		{Name: "kiln-unrelated", Version: "1.0-1"},
		{Name: "kiln-broken", Version: "1.0-1", Fields: map[string]string{"Depends": "kiln-lib (>= 9)"}},
		{Name: "kiln-doc", Version: "1.0-1", Arch: "all"},
		// apt counts itself essential unless told not to: it must not
		// join the essential set (mmdebstrap's essential variant has no apt).
		{Name: "apt", Version: "2.6.1", Fields: map[string]string{"Priority": "required", "Depends": "kiln-libc"}},
	}
}

func newResolver(t *testing.T) *debian.Resolver {
	debtest.Need(t, "apt-get", "apt-cache")
	return &debian.Resolver{Dir: t.TempDir(), Now: func() time.Time { return time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC) }}
}

func names(l *debian.Lock) []string {
	var out []string
	for _, p := range l.Packages {
		out = append(out, p.Name+"_"+p.Version+"_"+p.Arch)
	}
	sort.Strings(out)
	return out
}

// mmdebstrapClosure asks mmdebstrap (its extract variant: download and
// unpack, no maintainer scripts) which .debs it installs for the request.
func mmdebstrapClosure(t *testing.T, repo string, req debian.Request) []string {
	t.Helper()
	debtest.Need(t, "mmdebstrap")
	list := filepath.Join(t.TempDir(), "list")
	variant := "extract"
	if req.Essential {
		variant = "essential"
	}
	args := []string{"-q", "--variant=" + variant, "--architectures=" + req.Arch, "--skip=check/qemu",
		"--skip=essential/unlink", "--skip=check/empty",
		"--include=" + strings.Join(req.Packages, ","),
		`--extract-hook=ls "$1"/var/cache/apt/archives/ > ` + list,
		req.Suites[0], "/dev/null", "deb [trusted=yes] copy://" + repo + " " + req.Suites[0] + " main"}
	if req.Essential {
		// The essential variant runs maintainer scripts; only the
		// download list matters here, so stop after extracting.
		args = append(args[:len(args)-3], append([]string{"--essential-hook=false"}, args[len(args)-3:]...)...)
	}
	cmd := exec.Command("mmdebstrap", args...)
	out, err := cmd.CombinedOutput()
	if _, serr := os.Stat(list); serr != nil {
		t.Fatalf("mmdebstrap %v: %v\n%s", args, err, out)
	}
	b, _ := os.ReadFile(list)
	var debs []string
	for _, f := range strings.Fields(string(b)) {
		if strings.HasSuffix(f, ".deb") {
			debs = append(debs, strings.ReplaceAll(strings.TrimSuffix(f, ".deb"), "%3a", ":"))
		}
	}
	sort.Strings(debs)
	return debs
}

func TestResolveMatchesMmdebstrap(t *testing.T) {
	r := newResolver(t)
	repo := t.TempDir()
	debtest.Repo(t, repo, "bookworm", testDebs())
	for _, req := range []debian.Request{
		{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"kiln-app", "kiln-doc"}, Mirror: "file:" + repo, Trusted: true},
		{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"kiln-app"}, Essential: true, Mirror: "file:" + repo, Trusted: true},
	} {
		l, err := r.Resolve(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		got, want := names(l), mmdebstrapClosure(t, repo, req)
		if req.Essential {
			// mmdebstrap installs the essential set first (the extract
			// hook sees only it), then apt installs the rest on top:
			// the union is what it installs.
			ess := req
			ess.Essential = false
			want = union(want, mmdebstrapClosure(t, repo, ess))
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("essential=%v: kiln lock resolved\n  %v\nmmdebstrap installs\n  %v", req.Essential, got, want)
		}
		byName := map[string]debian.Package{}
		for _, p := range l.Packages {
			byName[p.Name] = p
			deb := filepath.Join(repo, filepath.FromSlash(p.Filename))
			sum := sha256File(t, deb)
			fi, _ := os.Stat(deb)
			if p.SHA256 != sum || p.Size != fi.Size() {
				t.Errorf("%s: lock says sha256 %s size %d, file has %s %d", p.Name, p.SHA256, p.Size, sum, fi.Size())
			}
		}
		if p := byName["kiln-libc"]; p.Source != "kiln-glibc" || p.SourceVersion != "2.36-9" {
			t.Errorf("kiln-libc source = %s %s, want kiln-glibc 2.36-9", p.Source, p.SourceVersion)
		}
		if p := byName["kiln-app"]; p.Version != "1:1.0-1" || p.Arch != "arm64" {
			t.Errorf("kiln-app = %+v", p)
		}
		if p, ok := byName["kiln-doc"]; ok && p.Arch != "all" {
			t.Errorf("kiln-doc arch = %s", p.Arch)
		}
		if req.Essential && !byName["kiln-shell"].Essential {
			t.Errorf("essential set missing or unmarked: %v", got)
		}
		// apt's order: a dependency before what depends on it.
		pos := map[string]int{}
		for i, p := range l.Packages {
			pos[p.Name] = i
		}
		if pos["kiln-lib"] > pos["kiln-app"] || pos["kiln-libc"] > pos["kiln-lib"] {
			t.Errorf("order %v: dependencies after their dependents", got)
		}
		back, err := debian.ParseLock(l.Marshal())
		if err != nil || len(back.Packages) != len(l.Packages) || !back.Resolved.Equal(l.Resolved) {
			t.Fatalf("lock does not round-trip: %v", err)
		}
	}
}

func TestResolveUpdate(t *testing.T) {
	r := newResolver(t)
	repo := t.TempDir()
	debs := testDebs()
	debtest.Repo(t, repo, "bookworm", debs)
	req := debian.Request{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"kiln-app"}, Mirror: "file:" + repo, Trusted: true}
	old, err := r.Resolve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if d := debian.Diff(old, old); len(d) != 0 {
		t.Fatalf("a lock differs from itself: %v", d)
	}
	// The snapshot time comes from the repository's Release Date (debtest
	// writes 1 Dec 2026 00:00 UTC) + 12 h, not from the clock.
	if got := old.SnapshotAt().Format(debian.SnapshotTimeFormat); got != "20261201T120000Z" || !old.Resolved.Equal(time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)) {
		t.Fatalf("snapshot time %s, resolved %s", got, old.Resolved)
	}
	// A point release: kiln-lib moves to 2.1-1 and starts depending on a new package.
	for i := range debs {
		if debs[i].Name == "kiln-lib" {
			debs[i].Version = "2.1-1"
			debs[i].Fields = map[string]string{"Depends": "kiln-libc, kiln-zlib"}
		}
	}
	debs = append(debs, debtest.Deb{Name: "kiln-zlib", Version: "1:1.2.13-1"})
	debtest.Repo(t, repo, "bookworm", debs)
	r.Now = func() time.Time { return time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC) }
	l, err := r.Resolve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range debian.Diff(old, l) {
		got = append(got, c.String())
	}
	want := []string{"upgraded   kiln-lib:arm64 2.0-1 -> 2.1-1", "added      kiln-zlib:arm64 1:1.2.13-1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := debian.Diff(l, old); len(d) != 2 || d[0].Kind != "downgraded" || d[1].Kind != "removed" {
		t.Errorf("reverse diff: %v", d)
	}
}

func TestResolveBadRequests(t *testing.T) {
	r := newResolver(t)
	repo := t.TempDir()
	debtest.Repo(t, repo, "bookworm", testDebs())
	req := func(pkgs ...string) debian.Request {
		return debian.Request{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: pkgs, Mirror: "file:" + repo, Trusted: true}
	}
	_, err := r.Resolve(context.Background(), req("kiln-app", "kiln-nonesuch"))
	if !errors.Is(err, debian.ErrNoPackage) || !strings.Contains(err.Error(), "kiln-nonesuch") {
		t.Errorf("missing package: %v", err)
	}
	_, err = r.Resolve(context.Background(), req("kiln-broken"))
	if !errors.Is(err, debian.ErrUnsatisfiable) || !strings.Contains(err.Error(), "kiln-lib (>= 9)") {
		t.Errorf("unsatisfiable: %v", err)
	}
	_, err = r.Resolve(context.Background(), debian.Request{Arch: "arm64", Suites: []string{"trixie"}, Components: []string{"main"}, Packages: []string{"xx"}, Mirror: "file:" + repo, Trusted: true})
	if !errors.Is(err, debian.ErrAPT) {
		t.Errorf("missing suite: %v", err)
	}
	for _, bad := range []debian.Request{
		{Arch: "", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"a"}},
		{Arch: "arm64", Suites: []string{"../x"}, Components: []string{"main"}, Packages: []string{"a"}},
		{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"-o=x"}},
		{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}},
		{Arch: "arm64", Suites: []string{"bookworm"}, Components: []string{"main"}, Packages: []string{"a"}, Mirror: "ftp://x"},
	} {
		if _, err := r.Resolve(context.Background(), bad); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

func union(a, b []string) []string {
	m := map[string]bool{}
	for _, x := range append(append([]string(nil), a...), b...) {
		m[x] = true
	}
	var out []string
	for x := range m {
		out = append(out, x)
	}
	sort.Strings(out)
	return out
}

func TestRepoURIs(t *testing.T) {
	out := "'http://mirror.invalid/debian/pool/main/g/gcc-12/libstdc%2b%2b6_12.2.0-14%2bdeb12u1_arm64.deb' libstdc++6_12.2.0-14+deb12u1_arm64.deb 1 MD5Sum:x\n" +
		"'http://mirror.invalid/debian-security/pool/updates/main/o/openssl/libssl3_3.0.17-1~deb12u2_arm64.deb' libssl3_3.0.17-1~deb12u2_arm64.deb 2 MD5Sum:y\n"
	m := debian.RepoURIs(out)
	if m["libstdc++6_12.2.0-14+deb12u1_arm64.deb"] != "http://mirror.invalid/debian/pool/main/g/gcc-12/libstdc++6_12.2.0-14+deb12u1_arm64.deb" {
		t.Errorf("%v", m)
	}
	if debian.ArchiveOf(m["libssl3_3.0.17-1~deb12u2_arm64.deb"], "pool/updates/main/o/openssl/libssl3_3.0.17-1~deb12u2_arm64.deb") != "debian-security" {
		t.Errorf("archive of the security mirror")
	}
}

package debian

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSnapshotURLDocumentedExample: snapshot.debian.org's own front page
// names /archive/debian/20091004T111800Z/ as "how ftp.debian.org/debian
// looked on the 4th of October 2009" at 11:18 UTC; a pool file below it is
// the archive's path appended.
func TestSnapshotURLDocumentedExample(t *testing.T) {
	when := time.Date(2009, 10, 4, 11, 18, 0, 0, time.UTC)
	got, err := SnapshotURL("https://snapshot.debian.org/", "debian", when, "pool/main/h/hello/hello_2.4-3_i386.deb")
	if err != nil || got != "https://snapshot.debian.org/archive/debian/20091004T111800Z/pool/main/h/hello/hello_2.4-3_i386.deb" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestReleaseDate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A clear-signed InRelease as Debian's archive publishes it, an
	// unsigned Release of a local repository, and index files around.
	write("deb.debian.org_debian_dists_bookworm_InRelease", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nAcquire-By-Hash: yes\n-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n")
	write("deb.debian.org_debian_dists_bookworm-updates_InRelease", "Origin: Debian\nDate: Wed, 02 Dec 2026 02:09:57 UTC\nValid-Until: Wed, 09 Dec 2026 02:09:57 UTC\n")
	write("_srv_repo_dists_kiln_Release", "Origin: kiln-test\nDate: Sun, 1 Nov 2026 00:00:00 +0000\n")
	write("deb.debian.org_debian_dists_bookworm_main_binary-arm64_Packages", "Package: x\nDate: Thu, 31 Dec 2099 00:00:00 UTC\n")
	got, err := ReleaseDate(dir)
	if want := time.Date(2026, 12, 2, 2, 9, 57, 0, time.UTC); err != nil || !got.Equal(want) {
		t.Fatalf("ReleaseDate = %v, %v; want %v (the newest Release, index files ignored)", got, err, want)
	}
	// The snapshot time is two import intervals later, in seconds, UTC.
	if st := SnapshotTime(got); st.Format(SnapshotTimeFormat) != "20261202T140957Z" {
		t.Fatalf("SnapshotTime = %s", st.Format(SnapshotTimeFormat))
	}
	write("deb.debian.org_debian_dists_broken_Release", "Date: yesterday\n")
	if _, err := ReleaseDate(dir); err == nil || !strings.Contains(err.Error(), "yesterday") {
		t.Fatalf("bad date: %v", err)
	}
	if _, err := ReleaseDate(t.TempDir()); err == nil {
		t.Fatal("no Release files: no error")
	}
}

// FuzzReleaseDate: any text read as a Release file either gives an error,
// or no date (no line starts "Date:"), or a UTC date from its Date: line
// whose snapshot timestamp formats and parses back to the same second and
// names a snapshot URL.
func FuzzReleaseDate(f *testing.F) {
	for _, s := range []string{
		"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nAcquire-By-Hash: yes\n",
		"Origin: kiln-test\nDate: Sun, 1 Nov 2026 00:00:00 +0000\r\n",
		"Date: Mon, 01 Jan 0000 00:30:00 +0100\n",
		"Date: Fri, 31 Dec 9999 23:00:00 -0200\n",
		"Date: yesterday\n",
		"Origin: none\n",
		" Date: Sat, 11 Jul 2026 10:16:37 UTC\nDate:\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		d, err := readReleaseDate(strings.NewReader(text))
		if err != nil || d.IsZero() {
			if err != nil && !d.IsZero() {
				t.Fatalf("error %v with date %v", err, d)
			}
			return
		}
		if !strings.HasPrefix(text, "Date:") && !strings.Contains(text, "\nDate:") {
			t.Fatalf("date %v from text without a Date: line", d)
		}
		if d.Location() != time.UTC {
			t.Fatalf("date %v is not UTC", d)
		}
		st := SnapshotTime(d)
		ts := st.Format(SnapshotTimeFormat)
		if back, err := time.Parse(SnapshotTimeFormat, ts); err != nil || !back.Equal(st) {
			t.Fatalf("snapshot time %v formats as %q, which parses as %v, %v", st, ts, back, err)
		}
		u, err := SnapshotURL(SnapshotBase, "debian", st, "pool/main/h/hello/hello_2.10-3_arm64.deb")
		if err != nil || !strings.Contains(u, "/"+ts+"/pool/") {
			t.Fatalf("snapshot URL %q, %v", u, err)
		}
	})
}

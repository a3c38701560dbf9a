package debian

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

var versionCases = []struct {
	a, b string
	want int
}{
	{"1.0", "1.0", 0},
	{"1.0-1", "1.0-2", -1},
	{"1:1.0", "2.0", 1},
	{"1.0~rc1", "1.0", -1},
	{"1.0~~", "1.0~", -1},
	{"1.0", "1.0+b1", -1},
	{"2.36-9+deb12u9", "2.36-9+deb12u10", -1},
	{"1.2.13.dfsg-1", "1.2.13-1", 1},
	{"0:1.0", "1.0", 0},
	{"1.0a", "1.0", 1},
	{"1.0-1", "1.0", 1},
	{"10", "9", 1},
	{"1.001", "1.1", 0},
	{"6.1.176-1", "6.1.158-1", 1},
	{"1:1.35.0-4+deb12u1+b1", "1:1.35.0-4+deb12u1", 1},
}

func TestCompareVersions(t *testing.T) {
	for _, c := range versionCases {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := CompareVersions(c.b, c.a); got != -c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

// FuzzCompareVersions checks kiln against dpkg itself on valid versions.
func FuzzCompareVersions(f *testing.F) {
	for _, c := range versionCases {
		f.Add(c.a, c.b)
	}
	dpkg, err := exec.LookPath("dpkg")
	f.Fuzz(func(t *testing.T, a, b string) {
		got := CompareVersions(a, b)
		if CompareVersions(b, a) != -got {
			t.Fatalf("not antisymmetric: %q %q", a, b)
		}
		if err != nil || !validVersion(a) || !validVersion(b) {
			return
		}
		// dpkg answers 0 (true) or 1 (false); anything else means it
		// refused a version our syntax check let through: not a comparison.
		ask := func(op string) (bool, bool) {
			err := exec.Command(dpkg, "--compare-versions", a, op, b).Run()
			var ee *exec.ExitError
			if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 1) {
				return false, false
			}
			return err == nil, true
		}
		lt, ok1 := ask("lt")
		gt, ok2 := ask("gt")
		if !ok1 || !ok2 {
			return
		}
		want := 0
		if lt {
			want = -1
		} else if gt {
			want = 1
		}
		if got != want {
			t.Fatalf("CompareVersions(%q, %q) = %d, dpkg says %d", a, b, got, want)
		}
	})
}

// validVersion is deb-version(7)'s syntax, strictly.
func validVersion(v string) bool {
	e, u, r := splitVersion(v)
	if u == "" || u[0] < '0' || u[0] > '9' || len(v) > 40 {
		return false
	}
	for _, c := range e {
		if !isDigit(byte(c)) {
			return false
		}
	}
	for _, c := range u + r {
		if !(isDigit(byte(c)) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '+' || c == '~' || c == '-' || c == ':') || c > 127 {
			return false
		}
	}
	// A hyphen introduces a revision, which may not be empty.
	return len(e) < 9 && !(strings.Contains(v, "-") && r == "")
}

func TestSnapshotURL(t *testing.T) {
	when := time.Date(2025, 5, 20, 6, 7, 8, 0, time.FixedZone("CEST", 2*3600))
	for _, c := range []struct{ archive, file, want string }{
		// The forms snapshot.debian.org documents: archive/NAME/TIMESTAMP/ + the archive's own path.
		{"debian", "pool/main/h/hello/hello_2.10-3_arm64.deb", "https://snapshot.debian.org/archive/debian/20250520T040708Z/pool/main/h/hello/hello_2.10-3_arm64.deb"},
		{"debian-security", "pool/updates/main/o/openssl/libssl3_3.0.17-1~deb12u2_arm64.deb", "https://snapshot.debian.org/archive/debian-security/20250520T040708Z/pool/updates/main/o/openssl/libssl3_3.0.17-1~deb12u2_arm64.deb"},
		{"debian", "pool/main/g/gcc-12/libstdc++6_12.2.0-14+deb12u1_arm64.deb", "https://snapshot.debian.org/archive/debian/20250520T040708Z/pool/main/g/gcc-12/libstdc++6_12.2.0-14+deb12u1_arm64.deb"},
		{"debian", "./pool/main/a/a b/x.deb", "https://snapshot.debian.org/archive/debian/20250520T040708Z/pool/main/a/a%20b/x.deb"},
	} {
		got, err := SnapshotURL(SnapshotBase, c.archive, when, c.file)
		if err != nil || got != c.want {
			t.Errorf("SnapshotURL(%s, %s) = %q, %v; want %q", c.archive, c.file, got, err, c.want)
		}
	}
	for _, bad := range []struct{ archive, file string }{
		{"", "pool/main/h/hello/x.deb"}, {"debian/x", "pool/x.deb"}, {"debian", "../pool/x.deb"},
		{"debian", "/pool/x.deb"}, {"debian", "dists/bookworm/Release"}, {"debian", "pool/../../etc/passwd"},
	} {
		if u, err := SnapshotURL(SnapshotBase, bad.archive, when, bad.file); err == nil {
			t.Errorf("SnapshotURL(%q, %q) = %q, want an error", bad.archive, bad.file, u)
		}
	}
	if _, err := SnapshotURL(SnapshotBase, "debian", time.Time{}, "pool/x.deb"); err == nil {
		t.Error("zero time accepted")
	}
}

package fetch

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/recipes"
)

func TestPrivateSourceList(t *testing.T) {
	etc := t.TempDir()
	os.MkdirAll(filepath.Join(etc, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(etc, "sources.list.d", "debian.sources"), []byte(`Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Enabled: no
`), 0o644)
	os.WriteFile(filepath.Join(etc, "sources.list"), []byte("deb [arch=amd64 signed-by=/k.gpg] http://other.example/x bookworm main contrib # tail\n#deb http://gone.example bookworm main\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "sources.list.d", "ignored.list.disabled"), []byte("deb http://ignored.example bookworm main\n"), 0o644)

	got, err := privateSourceList(etc, []string{"bookworm"}, []string{"main", "non-free-firmware"})
	if err != nil {
		t.Fatal(err)
	}
	want := "deb [signed-by=/k.gpg] http://other.example/x bookworm main non-free-firmware\n" +
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main non-free-firmware\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// No suites named: every suite of the host, components replaced.
	got, _ = privateSourceList(etc, nil, []string{"non-free-firmware"})
	if strings.Count(got, "\n") != 3 || !strings.Contains(got, "debian bookworm-updates non-free-firmware\n") {
		t.Errorf("all suites:\n%s", got)
	}
	if _, err := privateSourceList(etc, []string{"trixie"}, []string{"main"}); !errors.Is(err, ErrAPT) {
		t.Errorf("unknown suite: %v", err)
	}
}

func TestParseDebSource(t *testing.T) {
	d, err := recipes.ParseDebSource("deb:raspi-firmware:arm64=1.20220830+ds-1@bookworm,bookworm-updates/main,non-free-firmware")
	if err != nil || d.Name != "raspi-firmware" || d.Arch != "arm64" || d.Version != "1.20220830+ds-1" ||
		strings.Join(d.Suites, " ") != "bookworm bookworm-updates" || strings.Join(d.Components, " ") != "main non-free-firmware" {
		t.Errorf("%+v %v", d, err)
	}
	for _, bad := range []string{"deb:x", "deb:=1", "deb:x=1@bookworm", "deb:x=1@/", "deb:x=1/2", "deb:X=1", "deb:x=1@a b/main", "deb:x=1@bookworm/Main"} {
		if _, err := recipes.ParseDebSource(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestFetchDebComponent gets Debian's Raspberry Pi firmware, which lives in
// the non-free-firmware component the host's sources list does not have,
// through a private apt state with that component.
func TestFetchDebComponent(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get does not exist on this platform")
	}
	f, _ := newFetcher(t)
	in := recipes.Input{Name: "raspi-firmware", SHA256: "0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62",
		Sources: []string{"deb:raspi-firmware=1.20220830+ds-1@bookworm/non-free-firmware"}}
	p, err := f.Input(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"} {
		if _, err := os.Stat(filepath.Join(p, "usr/lib/raspi-firmware", name)); err != nil {
			t.Error(err)
		}
	}
}

package recipes

import (
	"errors"
	"strings"
	"testing"
)

const pinText = `# a comment that stays
name = "x"

[[inputs]]
name = "linux"
sources = ["deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1"] # the kernel
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"

[[inputs]]
name = "fw"
sources = ["https://mirror.example/fw.deb", "deb:raspi-firmware=1.0-1@bookworm/non-free-firmware", "https://snapshot.debian.org/archive/debian/20250101T000000Z/pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.0-1_all.deb"]
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
`

func TestRewritePins(t *testing.T) {
	snap := "https://snapshot.debian.org/archive/debian/20261202T140957Z/pool/main/l/linux-signed-arm64/linux-image-6.1.0-50-arm64_6.1.177-1_arm64.deb"
	fwSnap := "https://snapshot.debian.org/archive/debian/20260711T221637Z/pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.0-1_all.deb"
	fwOld := []string{"https://mirror.example/fw.deb", "deb:raspi-firmware=1.0-1@bookworm/non-free-firmware", "https://snapshot.debian.org/archive/debian/20250101T000000Z/pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.0-1_all.deb"}
	fwNew := PinnedSources(fwOld, "deb:raspi-firmware=1.0-1@bookworm/non-free-firmware", fwSnap)
	if strings.Join(fwNew, " ") != "https://mirror.example/fw.deb deb:raspi-firmware=1.0-1@bookworm/non-free-firmware "+fwSnap {
		t.Fatalf("PinnedSources = %v", fwNew)
	}
	out, err := RewritePins("recipe.toml", []byte(pinText), []PinEdit{
		{Old: "deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1", OldSHA256: strings.Repeat("1", 64),
			Sources: PinnedSources([]string{"deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1"}, "deb:linux-image-6.1.0-50-arm64:arm64=6.1.177-1", snap), SHA256: strings.Repeat("3", 64)},
		{Old: "deb:raspi-firmware=1.0-1@bookworm/non-free-firmware", OldSHA256: strings.Repeat("2", 64), Sources: fwNew, SHA256: strings.Repeat("2", 64)},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		`["deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1"] # the kernel`, `["deb:linux-image-6.1.0-50-arm64:arm64=6.1.177-1", "`+snap+`"] # the kernel`,
		strings.Repeat("1", 64), strings.Repeat("3", 64),
		"20250101T000000Z/pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.0-1_all.deb", "20260711T221637Z/pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.0-1_all.deb",
	).Replace(pinText)
	if string(out) != want {
		t.Fatalf("rewritten:\n%s\nwant:\n%s", out, want)
	}
	// What kiln parses back is the moved pin.
	if !IsSnapshotSource(snap) || IsSnapshotSource("https://mirror.example/fw.deb") || IsSnapshotSource("https://snapshot.debian.org/archive/debian/latest/pool/x.deb") {
		t.Fatal("IsSnapshotSource")
	}

	for _, c := range []struct{ text, why string }{
		{strings.Replace(pinText, `sha256 = "1111`, `sha256 = "4111`, 1), "no sha256"},
		{strings.Replace(pinText, `sources = ["deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1"]`, "sources = [\n  \"deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1\",\n]", 1), "no one-line"},
		{pinText + "\n[[inputs]]\nname = \"again\"\nsources = [\"deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1\"]\nsha256 = \"1\"\n", "two blocks"},
	} {
		_, err := RewritePins("recipe.toml", []byte(c.text), []PinEdit{{Old: "deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1", OldSHA256: strings.Repeat("1", 64), Sources: []string{"deb:x=1"}, SHA256: strings.Repeat("3", 64)}})
		if !errors.Is(err, ErrRewrite) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v", c.why, err)
		}
	}
}

func TestDebSourceString(t *testing.T) {
	for _, s := range []string{"deb:hello=2.10-3", "deb:u-boot-rpi:arm64=2023.01+dfsg-2+deb12u3", "deb:raspi-firmware=1:1.0-1@bookworm,bookworm-updates/main,non-free-firmware", "deb:x=1@/non-free"} {
		d, err := ParseDebSource(s)
		if err != nil || d.String() != s {
			t.Errorf("%s -> %+v %v -> %s", s, d, err, d.String())
		}
	}
}

// FuzzRewritePins: any recipe text either is refused with ErrRewrite or
// comes back with the same lines except the edited block's sources line
// (now holding exactly the new sources) and, when the sha256 moves, its
// sha256 line; nothing else in the file changes.
func FuzzRewritePins(f *testing.F) {
	f.Add(pinText)
	f.Add("sources = [\"deb:a=1\"]\nsha256 = \"" + strings.Repeat("0", 64) + "\"\n")
	f.Add("[x]\nsources = \"deb:a=1\" ]\n[[inputs]]\nsources=[ \"deb:a=1\" , \"x\"]\nsha256=\"" + strings.Repeat("0", 64) + "\" # c\n")
	old, oldSum, newSum := "deb:a=1", strings.Repeat("0", 64), strings.Repeat("1", 64)
	edit := PinEdit{Old: old, OldSHA256: oldSum, Sources: []string{"deb:a=2", "https://snapshot/x \"y\""}, SHA256: newSum}
	f.Fuzz(func(t *testing.T, text string) {
		out, err := RewritePins("fuzz.toml", []byte(text), []PinEdit{edit})
		if err != nil {
			if !errors.Is(err, ErrRewrite) {
				t.Fatalf("error %v is not ErrRewrite", err)
			}
			return
		}
		in, got := strings.SplitAfter(text, "\n"), strings.SplitAfter(string(out), "\n")
		if len(in) != len(got) {
			t.Fatalf("%d lines became %d", len(in), len(got))
		}
		changed := 0
		for i := range in {
			if in[i] == got[i] {
				continue
			}
			changed++
			k, _, _ := strings.Cut(strings.TrimSpace(got[i]), "=")
			switch strings.TrimSpace(k) {
			case "sources":
				if !strings.Contains(got[i], `["deb:a=2", "https://snapshot/x \"y\""]`) {
					t.Fatalf("line %d: sources rewritten as %q", i+1, got[i])
				}
			case "sha256":
				if strings.Replace(in[i], oldSum, newSum, 1) != got[i] {
					t.Fatalf("line %d: sha256 line %q became %q", i+1, in[i], got[i])
				}
			default:
				t.Fatalf("line %d changed and is neither sources nor sha256: %q -> %q", i+1, in[i], got[i])
			}
		}
		if changed > 2 {
			t.Fatalf("%d lines changed, want at most 2", changed)
		}
	})
}

package recipes

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// TestEveryShippedToolchain loads and validates every toolchain file kiln embeds.
func TestEveryShippedToolchain(t *testing.T) {
	names := ToolchainNames()
	if strings.Join(names, " ") != "arm-none-eabi-12.2 avr-gcc-5.4 avr-gcc-5.4-arduino" {
		t.Errorf("toolchains %v", names)
	}
	debRE := regexp.MustCompile(`^deb:([a-z0-9][a-z0-9.+-]*)=[0-9]`)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			tc, err := LoadToolchain(name)
			if err != nil {
				t.Fatal(err)
			}
			if tc.Arch != "avr" && tc.Arch != "cortex-m" {
				t.Errorf("arch %q", tc.Arch)
			}
			for _, p := range tc.Packages {
				if len(p.Sources) == 0 {
					t.Errorf("%s: no sources", p.Name)
				}
				// deb:NAME=VERSION, then its durable fallback on the
				// snapshot archive (kiln lock --pins writes it).
				if len(p.Sources) != 2 || !IsSnapshotSource(p.Sources[1]) || !strings.Contains(p.Sources[1], "/"+p.Name+"_") {
					t.Errorf("%s: sources %q: want deb:%s=VERSION and its snapshot URL", p.Name, p.Sources, p.Name)
				}
				if m := debRE.FindStringSubmatch(p.Sources[0]); m == nil || m[1] != p.Name {
					t.Errorf("%s: source %q is not deb:%s=VERSION", p.Name, p.Sources[0], p.Name)
				}
			}
			if !strings.HasPrefix(tc.Tool("gcc"), "usr/bin/") || !strings.HasSuffix(tc.Tool("gcc"), "-gcc") {
				t.Errorf("gcc is %s", tc.Tool("gcc"))
			}
			if len(tc.Host) == 0 {
				t.Error("the host impurities are not named")
			}
			if h1, h2 := tc.Hash(), tc.Hash(); h1 != h2 || len(h1) != 64 {
				t.Errorf("hash %q, then %q", h1, h2)
			}
		})
	}
}

func TestToolchainHashIgnoresSources(t *testing.T) {
	tc, err := LoadToolchain("avr-gcc-5.4")
	if err != nil {
		t.Fatal(err)
	}
	h := tc.Hash()
	tc.Packages[0].Sources = []string{"https://mirror.example/gcc-avr.deb", "file:/var/cache/gcc-avr.deb"}
	if tc.Hash() != h {
		t.Error("changing a package's sources changed the closure hash")
	}
	tc.Packages[1].SHA256 = strings.Repeat("0", 64)
	if tc.Hash() == h {
		t.Error("changing a package's sha256 did not change the closure hash")
	}
}

func TestLoadToolchainErrors(t *testing.T) {
	for _, name := range []string{"gcc-9", "../boards/arduino-uno", "", "AVR"} {
		if _, err := LoadToolchain(name); !errors.Is(err, ErrUnknownToolchain) {
			t.Errorf("LoadToolchain(%q) = %v, want ErrUnknownToolchain", name, err)
		}
	}
	pkg := "[[packages]]\nname='p'\nsources=['deb:p=1']\nsha256='" + strings.Repeat("a", 64) + "'\n"
	head := "name='t'\narch='avr'\nprefix='avr-'\nbin_dir='usr/bin'\n"
	bad := map[string]string{
		"no packages":    head,
		"unknown key":    head + "colour='red'\n" + pkg,
		"absolute link":  head + "[links]\n'usr/lib/x'='/etc'\n" + pkg,
		"escaping link":  head + "[links]\n'usr/x'='../../../etc'\n" + pkg,
		"relative bind":  head + "[binds]\n'usr/include'='usr/include'\n" + pkg,
		"bad lib dir":    "lib_dirs=['../lib']\n" + head + pkg,
		"missing prefix": "name='t'\narch='avr'\nbin_dir='usr/bin'\n" + pkg,
		"duplicate pkg":  head + pkg + pkg,
		"package subdir": head + pkg + "subdir='usr'\n",
		"malformed toml": head + "[[packages]\n",
	}
	for name, src := range bad {
		if _, err := ParseToolchain("t.toml", []byte(src)); err == nil || !strings.HasPrefix(err.Error(), "t.toml") || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if _, err := ParseToolchain("t.toml", []byte(head+"[links]\n'usr/lib/arm-none-eabi/include'='../../include/newlib'\n"+pkg)); err != nil {
		t.Errorf("good toolchain: %v", err)
	}
}

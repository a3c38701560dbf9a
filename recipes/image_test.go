package recipes

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/image"
)

const imageRecipe = `name = "img"
version = "1"
kind = "image"
board = "rpi-3b"
[[inputs]]
name = "linux"
sources = ["deb:linux-image-arm64:arm64=1"]
sha256 = "914f75b57a8e165d85fb910c3e2dcc7000a05a9fea3f42f90b26e8dd590d5f06"
[image]
table = "mbr"
size = "64MiB"
source_date_epoch = 1
[[image.partitions]]
name = "boot"
fs = "fat32"
size = "40MiB"
contents = [{ from = "linux:boot/vmlinuz", to = "kernel8.img" }]
[[image.partitions]]
name = "root"
fs = "squashfs"
size = %ROOT%
`

func loadImage(t *testing.T, text string) (*Recipe, error) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return Load(dir)
}

func TestImageRecipe(t *testing.T) {
	r, err := loadImage(t, strings.Replace(imageRecipe, "%ROOT%", `"16MiB"`, 1))
	if err != nil {
		t.Fatal(err)
	}
	spec := r.KindData.(*ImageSpec)
	if spec.Size != 64<<20 || spec.Partitions[1].Size != 16<<20 || spec.Partitions[0].FS != image.FAT32 {
		t.Errorf("spec = %+v", spec)
	}
	d, err := r.Derive()
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := loadImage(t, strings.Replace(imageRecipe, "%ROOT%", `"17MiB"`, 1))
	d2, _ := r2.Derive()
	if d.Hash() == d2.Hash() {
		t.Error("changing a partition size does not change the derivation hash")
	}
	r3, err := loadImage(t, strings.Replace(imageRecipe, "%ROOT%", `"16MiB"`+"\ncompression = \"xz\"", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c := r3.KindData.(*ImageSpec).Layout("s").Partitions[1].Compression; c != "xz" {
		t.Errorf("compression = \"xz\" gives the layout %q", c)
	}
	if d3, _ := r3.Derive(); d3.Hash() == d.Hash() {
		t.Error("choosing a squashfs compression does not change the derivation hash")
	}
}

func TestImageRecipeRejects(t *testing.T) {
	for name, c := range map[string]struct{ text, want string }{
		"exceeds the disk":     {strings.Replace(imageRecipe, "%ROOT%", `"32MiB"`, 1), "exceeds the disk"},
		"bad size":             {strings.Replace(imageRecipe, "%ROOT%", `"16 parsecs"`, 1), "size"},
		"unknown input":        {strings.Replace(strings.Replace(imageRecipe, "%ROOT%", "1048576", 1), "linux:boot", "kernel:boot", 1), "does not declare"},
		"overlap":              {strings.Replace(imageRecipe, "%ROOT%", `"8MiB"`+"\nstart = \"2MiB\"", 1), "overlap"},
		"unknown image key":    {strings.Replace(imageRecipe, "%ROOT%", `"8MiB"`+"\ncolour = 1", 1), "colour"},
		"unknown compression":  {strings.Replace(imageRecipe, "%ROOT%", `"8MiB"`+"\ncompression = \"lzo\"", 1), `compression "lzo"`},
		"compression of fat32": {strings.Replace(strings.Replace(imageRecipe, "%ROOT%", `"8MiB"`, 1), `fs = "fat32"`, `fs = "fat32"`+"\ncompression = \"gzip\"", 1), "squashfs partition's is one of"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loadImage(t, c.text)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, c.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "4KiB": 4096, "64MiB": 64 << 20, "2GiB": 2 << 30, "1M": 1 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseSize("1.5GiB"); err == nil {
		t.Error("1.5GiB accepted")
	}
}

// TestImageRPiAB: the A/B mechanism must be one the board's firmware has;
// the firmware, U-Boot and device tree inputs must be declared; kiln's own
// config.txt keys may not be set again.
func TestImageRPiAB(t *testing.T) {
	base := strings.Replace(imageRecipe, "%ROOT%", `"16MiB"`, 1)
	base = strings.Replace(base, "[image]\n", `[[inputs]]
name = "fw"
sources = ["deb:raspi-firmware=1.20220830+ds-1@bookworm/non-free-firmware"]
sha256 = "0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62"
[[inputs]]
name = "ub"
sources = ["deb:u-boot-rpi:arm64=2023.01+dfsg-2+deb12u3"]
sha256 = "3722f286cfafca03f4cac7adade04fccf66158ad8467501b9deabd154162b5e8"
[image]
`, 1)
	rpi := func(board, lines string) string {
		return strings.Replace(base, `board = "rpi-3b"`, `board = "`+board+`"`, 1) + "[image.rpi]\nautoboot = \"boot\"\n" + lines
	}
	ok := []string{
		rpi("rpi-3b", "ab = \"uboot-env\"\nfirmware = \"fw\"\nuboot = \"ub\"\ndtbs = \"linux:usr/lib/dtbs\"\nconfig = [\"enable_uart=1\"]\n"),
		rpi("rpi-zero-2w", "ab = \"uboot-env\"\nfirmware = \"fw\"\nuboot = \"ub\"\ndtbs = \"linux:usr/lib/dtbs\"\nbootlimit = 9\n"),
		rpi("rpi-4b", "ab = \"tryboot\"\nfirmware = \"fw\"\n"),
	}
	for _, text := range ok {
		if _, err := loadImage(t, text); err != nil {
			t.Errorf("%v\n%s", err, text)
		}
	}
	for _, c := range []struct{ text, want string }{
		{rpi("rpi-3b", "ab = \"tryboot\"\nfirmware = \"fw\"\n"), "no such A/B mechanism: \"tryboot\" (it has uboot-env)"},
		{rpi("rpi-4b", "ab = \"uboot-env\"\nfirmware = \"fw\"\nuboot = \"ub\"\ndtbs = \"linux:x\"\n"), "no such A/B mechanism: \"uboot-env\" (it has tryboot)"},
		{rpi("rpi-4b", "ab = \"tryboot\"\n"), "rpi.firmware must name a declared input"},
		{rpi("rpi-3b", "ab = \"uboot-env\"\nfirmware = \"fw\"\ndtbs = \"linux:x\"\n"), "rpi.uboot must name a declared input"},
		{rpi("rpi-3b", "ab = \"uboot-env\"\nfirmware = \"fw\"\nuboot = \"ub\"\ndtbs = \"nope:x\"\n"), "rpi.dtbs must name a declared input"},
		{rpi("rpi-3b", "ab = \"uboot-env\"\nfirmware = \"fw\"\nuboot = \"ub\"\ndtbs = \"linux:x\"\nbootlimit = 10\n"), "bootlimit 10"},
		{rpi("rpi-4b", "ab = \"tryboot\"\nfirmware = \"fw\"\nconfig = [\"kernel=other.img\"]\n"), "rpi.config sets \"kernel\""},
		{rpi("rpi-4b", "ab = \"tryboot\"\nfirmware = \"fw\"\nconfig = [\"initramfs x.gz followkernel\"]\n"), "rpi.config sets \"initramfs\""},
		{rpi("rpi-4b", "ab = \"tryboot\"\nfirmware = \"fw\"\nkernel = \"../k\"\n"), "not a plain file name"},
	} {
		_, err := loadImage(t, c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v, want %q", err, c.want)
		}
	}
	_, err := loadImage(t, rpi("rpi-3b", "ab = \"tryboot\"\nfirmware = \"fw\"\n"))
	if !errors.Is(err, boards.ErrNoABMechanism) {
		t.Errorf("a mechanism the board lacks: %v does not wrap boards.ErrNoABMechanism", err)
	}
}

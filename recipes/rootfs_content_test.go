package recipes

import (
	"errors"
	"strings"
	"testing"
)

// { from = "rootfs" } names the assembled Debian root: one squashfs or ext4
// partition takes it whole, and only when [image.rootfs] declares one.
func TestRootfsContent(t *testing.T) {
	const rootfs = `
[image.rootfs]
arch = "arm64"
suites = ["bookworm"]
components = ["main"]
packages = ["dash"]
`
	root := `"16MiB"
contents = [{ from = "rootfs", to = "/" }]`
	ok, err := loadImage(t, strings.Replace(imageRecipe, "%ROOT%", root, 1)+rootfs)
	if err != nil {
		t.Fatalf("a squashfs root from [image.rootfs]: %v", err)
	}
	if _, err := ok.Derive(); !errors.Is(err, ErrNoLock) {
		t.Errorf("derive without rootfs.lock: %v, want ErrNoLock", err)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"no rootfs table", strings.Replace(imageRecipe, "%ROOT%", root, 1), "needs an [image.rootfs] table"},
		{"not the whole partition", strings.Replace(imageRecipe, "%ROOT%", `"16MiB"
contents = [{ from = "rootfs", to = "/usr" }]`, 1) + rootfs, "the root filesystem is the whole partition"},
		{"in a FAT partition", strings.Replace(strings.Replace(imageRecipe, "%ROOT%", `"16MiB"`, 1),
			`contents = [{ from = "linux:boot/vmlinuz", to = "kernel8.img" }]`, `contents = [{ from = "rootfs", to = "/" }]`, 1) + rootfs,
			`needs fs = "squashfs" or "ext4"`},
		{"twice", strings.Replace(imageRecipe, "%ROOT%", root, 1) + `
[[image.partitions]]
name = "root2"
fs = "ext4"
size = "4MiB"
contents = [{ from = "rootfs", to = "/" }]
` + rootfs, "already goes into partition root"},
		{"in the initramfs", strings.Replace(imageRecipe, "%ROOT%", `"16MiB"`, 1) + `
[image.initramfs]
contents = [{ from = "rootfs", to = "/" }]
` + rootfs, "not the initramfs"},
	} {
		_, err := loadImage(t, tc.text)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.want)
		}
	}
}

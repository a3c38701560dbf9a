package blockdev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMachine writes a sysfs, a /dev/disk/by-id and a mountinfo: a system
// disk (sda, "/" on sda2), a USB card reader with a card (sdb, removable,
// a partition mounted by the desktop), a built-in reader's card (mmcblk0,
// removable=0 but type SD), a reader without a card (sdc, size 0) and an
// unused loop device.
func fakeMachine(t *testing.T) ListOptions {
	root := t.TempDir()
	sys, dev, proc := filepath.Join(root, "sys"), filepath.Join(root, "dev"), filepath.Join(root, "proc")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk := func(name, num, size, rem, vendor, model string, parts ...string) {
		d := filepath.Join(sys, "block", name)
		write(filepath.Join(d, "dev"), num)
		write(filepath.Join(d, "size"), size)
		write(filepath.Join(d, "removable"), rem)
		if vendor != "" {
			write(filepath.Join(d, "device", "vendor"), vendor)
			write(filepath.Join(d, "device", "model"), model)
		}
		for _, p := range parts {
			name, num, _ := strings.Cut(p, "=")
			write(filepath.Join(d, name, "partition"), "1")
			write(filepath.Join(d, name, "dev"), num)
		}
	}
	disk("sda", "8:0", "1953525168", "0", "ATA", "Samsung SSD 870", "sda1=8:1", "sda2=8:2")
	disk("sdb", "8:16", "62333952", "1", "Generic", "STORAGE DEVICE", "sdb1=8:17")
	disk("sdc", "8:32", "0", "1", "Generic", "SD/MMC")
	disk("mmcblk0", "179:0", "31116288", "0", "", "", "mmcblk0p1=179:1")
	write(filepath.Join(sys, "block", "mmcblk0", "device", "type"), "SD")
	disk("loop0", "7:0", "0", "0", "", "")
	write(filepath.Join(proc, "mountinfo"), strings.Join([]string{
		"22 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw",
		"40 22 8:17 / /media/user/bootfs rw,relatime - vfat /dev/sdb1 rw",
	}, "\n"))
	os.MkdirAll(filepath.Join(dev, "disk", "by-id"), 0o755)
	for link, target := range map[string]string{
		"usb-Generic_STORAGE_DEVICE_000000001206-0:0":       "../../sdb",
		"usb-Generic_STORAGE_DEVICE_000000001206-0:0-part1": "../../sdb1",
		"mmc-SD32G_0x1234abcd":                              "../../mmcblk0",
		"ata-Samsung_SSD_870_S5Y1":                          "../../sda",
	} {
		if err := os.Symlink(target, filepath.Join(dev, "disk", "by-id", link)); err != nil {
			t.Fatal(err)
		}
	}
	return ListOptions{Sys: sys, Dev: dev, Proc: proc}
}

func TestListRemovableDisks(t *testing.T) {
	opts := fakeMachine(t)
	disks, err := List(opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range disks {
		got = append(got, strings.TrimPrefix(d.String(), opts.Dev))
	}
	want := []string{
		"/mmcblk0  15.9 GB  " + opts.Dev + "/disk/by-id/mmc-SD32G_0x1234abcd",
		"/sdb  31.9 GB  Generic STORAGE DEVICE  " + opts.Dev + "/disk/by-id/usb-Generic_STORAGE_DEVICE_000000001206-0:0  (mounted on /media/user/bootfs)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("list:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	opts.All = true
	disks, err = List(opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 3 || disks[1].Path != opts.Dev+"/sda" || !disks[1].System || disks[1].Removable {
		t.Errorf("all disks: %+v", disks)
	}
}

// On this machine (no card readers in the test environment) List works on
// the real sysfs and lists no loop device: they are not removable.
func TestListThisMachine(t *testing.T) {
	disks, err := List(ListOptions{})
	if err != nil {
		t.Skipf("no sysfs: %v", err)
	}
	for _, d := range disks {
		if !d.Removable || strings.HasPrefix(filepath.Base(d.Path), "loop") {
			t.Errorf("listed %v", d)
		}
	}
}

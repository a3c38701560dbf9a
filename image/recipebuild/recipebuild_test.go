package recipebuild_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/image/uboot/uboottest"
)

// The rpi-appliance image is built by the kiln binary (built without -race:
// compressing 256 MiB under the race detector would take many minutes), twice,
// from two copies of the recipe into two fresh stores.
var (
	once    sync.Once
	builds  [2]string // output directories
	stores  [2]string
	onceErr error
	work    string
)

func TestMain(m *testing.M) {
	var err error
	work, err = os.MkdirTemp("", "kiln-rpi-appliance-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(work)
	os.Exit(code)
}

func copyDir(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		t := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(t, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(t, b, fi.Mode().Perm())
	})
}

func buildTwice(t *testing.T) {
	t.Helper()
	once.Do(func() {
		kiln := filepath.Join(work, "kiln")
		cmd := exec.Command("go", "build", "-o", kiln, "kiln.dev/kiln/cmd/kiln")
		if out, err := cmd.CombinedOutput(); err != nil {
			onceErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		for i := range builds {
			recipe := filepath.Join(work, fmt.Sprintf("checkout-%d", i), "deep", "rpi-appliance")
			if err := copyDir("../../recipes/rpi-appliance", recipe); err != nil {
				onceErr = err
				return
			}
			stores[i] = filepath.Join(work, fmt.Sprintf("store-%d", i))
			builds[i] = filepath.Join(work, fmt.Sprintf("out-%d", i))
			cmd := exec.Command(kiln, "image", "build", "--store", stores[i], "--out", builds[i], recipe)
			if out, err := cmd.CombinedOutput(); err != nil {
				onceErr = fmt.Errorf("kiln image build: %v\n%s", err, out)
				return
			}
		}
	})
	if onceErr != nil {
		t.Fatal(onceErr)
	}
}

func manifest(t *testing.T, dir string) *recipebuild.Result {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, recipebuild.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var r recipebuild.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func sum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRPiApplianceIsReproducible(t *testing.T) {
	buildTwice(t)
	a, b := manifest(t, builds[0]), manifest(t, builds[1])
	if a.Derivation != b.Derivation {
		t.Fatalf("derivations differ: %s vs %s", a.Derivation, b.Derivation)
	}
	for _, name := range []string{"image.img", "image.img.xz", "image.bmap"} {
		sa, sb := sum(t, filepath.Join(builds[0], name)), sum(t, filepath.Join(builds[1], name))
		if sa != sb {
			t.Errorf("%s differs between two builds from different paths and stores: %s vs %s", name, sa, sb)
		}
		if sa != a.Outputs[name].SHA256 {
			t.Errorf("%s: manifest says %s, file is %s", name, a.Outputs[name].SHA256, sa)
		}
	}
}

// part returns "IMG@@OFFSET" for mtools.
func part(img string, m *recipebuild.Result, name string) (string, recipebuild.MetaPartition) {
	for _, p := range m.Metadata.Partitions {
		if p.Name == name {
			return fmt.Sprintf("%s@@%d", img, p.Start), p
		}
	}
	panic("no partition " + name)
}

func extract(t *testing.T, img string, p recipebuild.MetaPartition) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), p.Name)
	run(t, "dd", "if="+img, "of="+out, "bs=1M", fmt.Sprintf("skip=%d", p.Start), fmt.Sprintf("count=%d", p.Size), "status=none", "iflag=skip_bytes,count_bytes")
	return out
}

func TestRPiApplianceWithRealTools(t *testing.T) {
	buildTwice(t)
	dir := builds[0]
	img := filepath.Join(dir, "image.img")
	m := manifest(t, dir)

	// The partition table is the declared one.
	dump := run(t, "sfdisk", "-d", img)
	if !strings.Contains(dump, "label-id: 0x"+m.Metadata.DiskID) {
		t.Errorf("sfdisk: disk id %s missing:\n%s", m.Metadata.DiskID, dump)
	}
	for _, p := range m.Metadata.Partitions {
		line := fmt.Sprintf("%s%d : start=%12d, size=%12d", img, p.Number, p.Start/512, p.Size/512)
		if !strings.Contains(dump, line) {
			t.Errorf("sfdisk -d lacks %q:\n%s", line, dump)
		}
	}

	// Every FAT partition passes fsck.vfat; the ext4 one e2fsck.
	for _, name := range []string{"config", "boot-a", "boot-b"} {
		_, p := part(img, m, name)
		run(t, "fsck.vfat", "-n", extract(t, img, p))
	}
	_, data := part(img, m, "data")
	run(t, "e2fsck", "-fn", extract(t, img, data))

	// Boot files read back with mtools equal their sources.
	kernel := filepath.Join(stores[0])
	matches, _ := filepath.Glob(filepath.Join(kernel, "*-linux", "boot", "vmlinuz-*"))
	if len(matches) != 1 {
		t.Fatalf("kernel in store: %v", matches)
	}
	out := t.TempDir()
	bootA, _ := part(img, m, "boot-a")
	run(t, "mcopy", "-n", "-i", bootA, "::kernel8.img", "::cmdline.txt", "::initramfs.gz", "::bcm2837-rpi-3-b.dtb", out)
	if sum(t, filepath.Join(out, "kernel8.img")) != sum(t, matches[0]) {
		t.Error("kernel8.img on boot-a differs from the kernel package's vmlinuz")
	}
	var slotA, slotB recipebuild.Slot
	for _, s := range m.Metadata.Slots {
		if s.Name == "a" {
			slotA = s
		} else {
			slotB = s
		}
	}
	cmdA, _ := os.ReadFile(filepath.Join(out, "cmdline.txt"))
	if !strings.Contains(string(cmdA), "root=PARTUUID="+slotA.RootPartUUID) {
		t.Errorf("boot-a cmdline.txt %q does not name slot a's root %s", cmdA, slotA.RootPartUUID)
	}
	bootB, _ := part(img, m, "boot-b")
	if c := run(t, "mtype", "-i", bootB, "::cmdline.txt"); !strings.Contains(c, "root=PARTUUID="+slotB.RootPartUUID) {
		t.Errorf("boot-b cmdline.txt %q does not name slot b's root %s", c, slotB.RootPartUUID)
	}
	cfg, _ := part(img, m, "config")
	// U-Boot A/B: the environment kiln wrote reads back with fw_printenv.
	env := fwPrintenv(t, cfg)
	for k, v := range map[string]string{"boot_slot": "a", "boot_fallback": "a", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3"} {
		if env[k] != v {
			t.Errorf("uboot.env: fw_printenv says %s=%q, want %q", k, env[k], v)
		}
	}
	var meta recipebuild.Metadata
	if err := json.Unmarshal([]byte(run(t, "mtype", "-i", cfg, "::kiln.json")), &meta); err != nil || meta.Derivation != m.Derivation {
		t.Errorf("kiln.json on the config partition: %v, derivation %q", err, meta.Derivation)
	}
	// The initramfs is a newc cpio that cpio(1) lists.
	list := run(t, "sh", "-c", "zcat "+filepath.Join(out, "initramfs.gz")+" | cpio -it --quiet")
	for _, f := range []string{"init", "bin/busybox", "dev/console", "lib/modules/sdhci-iproc.ko", "lib/modules/bcm2835.ko", "lib/modules/squashfs.ko"} {
		if !strings.Contains("\n"+list, "\n"+f+"\n") {
			t.Errorf("initramfs lacks %s:\n%s", f, list)
		}
	}

	// The squashfs root lists every file and they read back equal.
	_, rootA := part(img, m, "root-a")
	sq := extract(t, img, rootA)
	ls := run(t, "unsquashfs", "-l", sq)
	for _, f := range []string{"etc/hostname", "etc/motd", "etc/kiln/derivation"} {
		if !strings.Contains(ls, "squashfs-root/"+f) {
			t.Errorf("unsquashfs -l lacks %s:\n%s", f, ls)
		}
	}
	rootOut := filepath.Join(t.TempDir(), "root")
	run(t, "unsquashfs", "-d", rootOut, sq)
	for _, f := range []string{"etc/hostname", "etc/motd"} {
		if sum(t, filepath.Join(rootOut, f)) != sum(t, filepath.Join("../../recipes/rpi-appliance/rootfs", f)) {
			t.Errorf("%s in the root slot differs from the recipe's", f)
		}
	}
	if d, _ := os.ReadFile(filepath.Join(rootOut, "etc/kiln/derivation")); strings.TrimSpace(string(d)) != m.Derivation {
		t.Errorf("derivation file holds %q, want %s", d, m.Derivation)
	}

	// kiln image inspect reads the table, the filesystems and kiln.json.
	var info struct {
		Table      string
		Partitions []struct {
			Number int
			FS     string
		}
		Metadata recipebuild.Metadata
	}
	if err := json.Unmarshal([]byte(run(t, filepath.Join(work, "kiln"), "image", "inspect", "--json", img)), &info); err != nil {
		t.Fatal(err)
	}
	fsByNumber := map[int]string{}
	for _, p := range info.Partitions {
		fsByNumber[p.Number] = p.FS
	}
	if info.Table != "mbr" || info.Metadata.Derivation != m.Derivation || fsByNumber[1] != "fat32" ||
		fsByNumber[5] != "squashfs" || fsByNumber[6] != "empty" || fsByNumber[7] != "ext4" {
		t.Errorf("kiln image inspect: table %s, derivation %s, filesystems %v", info.Table, info.Metadata.Derivation, fsByNumber)
	}

	// .xz and .bmap give back the image.
	xzPath := filepath.Join(dir, "image.img.xz")
	run(t, "xz", "-t", xzPath)
	want := sum(t, img)
	dec := filepath.Join(t.TempDir(), "dec.img")
	run(t, "sh", "-c", "xz -dc "+xzPath+" > "+dec)
	if sum(t, dec) != want {
		t.Error("xz -dc image.img.xz differs from image.img")
	}
	cp := filepath.Join(t.TempDir(), "out.img")
	run(t, "bmaptool", "copy", "--bmap", filepath.Join(dir, "image.bmap"), xzPath, cp)
	if sum(t, cp) != want {
		t.Error("bmaptool copy differs from image.img")
	}
}

// TestRPiApplianceBootsInQEMU boots the image on QEMU's raspi3b with the
// kernel, device tree, initramfs and command line taken from the image's
// slot-a boot partition, and waits for the initramfs to print the derivation
// hash it read from the root slot it mounted from the SD card.
func TestRPiApplianceBootsInQEMU(t *testing.T) {
	buildTwice(t)
	dir := builds[0]
	img := filepath.Join(dir, "image.img")
	m := manifest(t, dir)
	boot, _ := part(img, m, "boot-a")
	console := bootInQEMU(t, img, boot, m.Derivation)
	if !strings.Contains(console, "mounted /dev/mmcblk0p5") {
		t.Errorf("the root slot was not mounted from the SD card's partition 5:\n%s", tail(console, 20))
	}
}

// bootInQEMU boots the SD card image card on QEMU's raspi3b with the kernel,
// device tree, initramfs and command line from the FAT partition boot
// ("file@@offset", as mtools names it) and returns the console up to the
// initramfs's line naming the derivation it found in the root it mounted;
// it fails the test if that is not derivation within two minutes.
func bootInQEMU(t *testing.T, card, boot, derivation string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-aarch64"); err != nil {
		t.Fatalf("qemu-system-aarch64 is not installed (make deps installs qemu-system-arm): %v", err)
	}
	out := t.TempDir()
	run(t, "mcopy", "-n", "-i", boot, "::kernel8.img", "::initramfs.gz", "::cmdline.txt", out)
	dtb := filepath.Join(out, "bcm2837-rpi-3-b.dtb")
	if strings.Contains(run(t, "mdir", "-b", "-i", boot, "::"), "bcm2837-rpi-3-b.dtb") {
		run(t, "mcopy", "-n", "-i", boot, "::bcm2837-rpi-3-b.dtb", out)
	} else { // another board's slot (a Pi 4's): the kernel package's Pi 3B tree
		m, _ := filepath.Glob(filepath.Join(stores[0], "*-linux", "usr/lib/linux-image-*/broadcom/bcm2837-rpi-3-b.dtb"))
		if len(m) != 1 {
			t.Fatalf("bcm2837-rpi-3-b.dtb in the store: %v", m)
		}
		dtb = m[0]
	}
	cmdline, _ := os.ReadFile(filepath.Join(out, "cmdline.txt"))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-aarch64", "-M", "raspi3b", "-nographic", "-no-reboot",
		"-kernel", filepath.Join(out, "kernel8.img"), "-dtb", dtb,
		"-initrd", filepath.Join(out, "initramfs.gz"),
		"-drive", "file="+card+",if=sd,format=raw,snapshot=on",
		"-append", strings.TrimSpace(string(cmdline)))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var console bytes.Buffer
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		if strings.Contains(line, "kiln: derivation ") {
			if !strings.Contains(line, "kiln: derivation "+derivation) {
				t.Fatalf("booted %q, want derivation %s", line, derivation)
			}
			return console.String()
		}
	}
	t.Fatalf("no \"kiln: derivation %s\" within the time bound (%v); console:\n%s", derivation, ctx.Err(), tail(console.String(), 40))
	return ""
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// fwPrintenv reads uboot.env from the FAT partition fat ("file@@offset")
// with mtools and prints it with the real fw_printenv.
func fwPrintenv(t *testing.T, fat string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	run(t, "mcopy", "-n", "-i", fat, "::uboot.env", dir)
	b, err := os.ReadFile(filepath.Join(dir, "uboot.env"))
	if err != nil {
		t.Fatal(err)
	}
	return uboottest.Printenv(t, b)
}

package sshtest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/image/uboot"
)

// ImageSpec describes a test card image with kiln's A/B layout: partition 1
// (FAT: autoboot.txt, kiln.json), boot A and boot B (FAT: cmdline.txt,
// config.txt, kiln.json), root A and root B (squashfs). It is made with the
// real tools (sfdisk, mkfs.vfat, mtools, mksquashfs).
type ImageSpec struct {
	Derivation string  // also seeds every ID in the image
	RootSize   int64   // size of each root partition; default 8 MiB
	Payload    int64   // bytes of pseudo-random payload in the root; default 1 MiB
	Seed       int64   // payload seed
	Changed    float64 // fraction of the payload's 4 KiB blocks that differ from Seed's payload
	ChangeSeed int64
	BothSlots  bool   // slot B holds the same system as slot A
	Board      string // the board kiln.json names; default rpi-3b
	// AB is the A/B mechanism (kiln.json's "ab"): "" or "tryboot" puts
	// autoboot.txt on partition 1; "uboot-env" puts uboot.env there (slot
	// a committed, BootLimit trial boots, default 1), which the device's
	// boot controller reads as U-Boot running kiln's boot.scr would.
	AB        string
	BootLimit int
}

// Slots is the layout kiln.json declares for images made here.
var Slots = []map[string]any{{"name": "a", "boot": 2, "root": 4}, {"name": "b", "boot": 3, "root": 5}}

const (
	mib      = 1 << 20
	bootSize = 8 * mib
	selSize  = 4 * mib
)

// BuildImage writes the image into dir and returns its path.
func BuildImage(dir string, s ImageSpec) (string, error) {
	if s.RootSize == 0 {
		s.RootSize = 8 * mib
	}
	if s.Payload == 0 {
		s.Payload = 1 * mib
	}
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	id := func(tag string) []byte {
		h := sha256.Sum256([]byte(s.Derivation + "/" + tag))
		return h[:16]
	}
	guid := func(tag string) string {
		g := id(tag)
		g[6] = g[6]&0x0f | 0x40
		g[8] = g[8]&0x3f | 0x80
		return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.BigEndian.Uint32(g[0:]), binary.BigEndian.Uint16(g[4:]), binary.BigEndian.Uint16(g[6:]), g[8:10], g[10:16])
	}
	// Root file system.
	rootDir := filepath.Join(work, "rootfs")
	os.MkdirAll(filepath.Join(rootDir, "etc/kiln"), 0o755)
	os.WriteFile(filepath.Join(rootDir, RootDerivationFile), []byte(s.Derivation+"\n"), 0o644)
	payload := make([]byte, s.Payload)
	rand.New(rand.NewSource(s.Seed)).Read(payload)
	if s.Changed > 0 {
		r := rand.New(rand.NewSource(s.ChangeSeed))
		blocks := int(s.Payload / 4096)
		for i := 0; i < int(float64(blocks)*s.Changed+0.5); i++ {
			b := r.Intn(blocks)
			r.Read(payload[b*4096 : b*4096+4096])
		}
	}
	os.WriteFile(filepath.Join(rootDir, "payload"), payload, 0o644)
	rootImg := filepath.Join(work, "root.sqfs")
	if _, err := run("mksquashfs", rootDir, rootImg, "-noappend", "-all-root", "-no-xattrs", "-mkfs-time", "0", "-all-time", "0", "-noI", "-noD", "-noF", "-quiet"); err != nil {
		return "", err
	}
	if st, _ := os.Stat(rootImg); st.Size() > s.RootSize {
		return "", fmt.Errorf("root (%d bytes) does not fit its slot (%d)", st.Size(), s.RootSize)
	}
	// Partition table.
	img := filepath.Join(dir, "card-"+s.Derivation+".img")
	starts := []int64{1 * mib}
	sizes := []int64{selSize, bootSize, bootSize, s.RootSize, s.RootSize}
	for i := 1; i < len(sizes); i++ {
		starts = append(starts, starts[i-1]+sizes[i-1])
	}
	total := starts[4] + sizes[4] + 1*mib
	f, err := os.Create(img)
	if err != nil {
		return "", err
	}
	f.Truncate(total)
	f.Close()
	var table strings.Builder
	fmt.Fprintf(&table, "label: gpt\nlabel-id: %s\n", guid("disk"))
	names := []string{"kiln", "boot-a", "boot-b", "root-a", "root-b"}
	for i := range sizes {
		typ := "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
		if i < 3 {
			typ = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
		}
		fmt.Fprintf(&table, "start=%d, size=%d, type=%s, uuid=%s, name=%s\n", starts[i]/512, sizes[i]/512, typ, guid(names[i]), names[i])
	}
	tf := filepath.Join(work, "table")
	os.WriteFile(tf, []byte(table.String()), 0o644)
	if _, err := run("sh", "-c", fmt.Sprintf("sfdisk -q %s < %s", img, tf)); err != nil {
		return "", err
	}
	partuuid := func(i int) string { return guid(names[i-1]) }
	// FAT partitions.
	fat := func(n int, files map[string]string) error {
		p := filepath.Join(work, fmt.Sprintf("p%d.vfat", n))
		vol := hex.EncodeToString(id(fmt.Sprint("vol", n))[:4])
		if _, err := run("mkfs.vfat", "--invariant", "-i", vol, "-n", strings.ToUpper(names[n-1]), "-C", p, fmt.Sprint(sizes[n-1]/1024)); err != nil {
			return err
		}
		for name, content := range files {
			src := filepath.Join(work, name)
			os.WriteFile(src, []byte(content), 0o644)
			if _, err := run("mcopy", "-m", "-i", p, src, "::"+name); err != nil {
				return err
			}
		}
		return place(img, p, starts[n-1])
	}
	if s.Board == "" {
		s.Board = "rpi-3b"
	}
	m := map[string]any{"derivation": s.Derivation, "name": "test-appliance", "board": s.Board, "slots": Slots}
	p1 := map[string]string{"autoboot.txt": "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"}
	if s.AB == "uboot-env" {
		if s.BootLimit == 0 {
			s.BootLimit = 1
		}
		env, err := uboot.EncodeEnv(map[string]string{"bootcmd": "load mmc 0:1 ${scriptaddr} boot.scr && source ${scriptaddr}",
			"boot_slot": "a", "boot_fallback": "a", "upgrade_available": "0", "bootcount": "0", "bootlimit": fmt.Sprint(s.BootLimit)}, uboot.EnvSize)
		if err != nil {
			return "", err
		}
		p1 = map[string]string{"uboot.env": string(env)}
	}
	if s.AB != "" {
		m["ab"] = s.AB
	}
	meta, _ := json.Marshal(m)
	p1["kiln.json"] = string(meta)
	if err := fat(1, p1); err != nil {
		return "", err
	}
	bootFiles := func(root int) map[string]string {
		return map[string]string{
			"cmdline.txt": fmt.Sprintf("console=serial0,115200 root=PARTUUID=%s rootfstype=squashfs ro rootwait\n", partuuid(root)),
			"config.txt":  "arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n",
			"kiln.json":   string(meta),
		}
	}
	if err := fat(2, bootFiles(4)); err != nil {
		return "", err
	}
	var bootB map[string]string
	if s.BothSlots {
		bootB = bootFiles(5)
	}
	if err := fat(3, bootB); err != nil {
		return "", err
	}
	if err := place(img, rootImg, starts[3]); err != nil {
		return "", err
	}
	if s.BothSlots {
		if err := place(img, rootImg, starts[4]); err != nil {
			return "", err
		}
	}
	return img, nil
}

func place(img, part string, off int64) error {
	_, err := run("dd", "if="+part, "of="+img, "bs=1M", "oflag=seek_bytes", fmt.Sprintf("seek=%d", off), "conv=notrunc,sparse", "status=none")
	return err
}

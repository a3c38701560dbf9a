package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// genimageLayout is a layout genimage can build too: MBR, FAT32 boot,
// squashfs root, ext4 data, at fixed offsets.
func genimageLayout(t testing.TB, src string) *Layout {
	tr := NewTree()
	if err := tr.AddFile("", src); err != nil {
		t.Fatal(err)
	}
	return &Layout{Table: "mbr", Size: 80 << 20, Seed: "genimage", Epoch: 1700000000,
		Partitions: []*Partition{
			{Name: "boot", FS: FAT32, Start: 1 << 20, Size: 40 << 20, Bootable: true, Label: "BOOT", Contents: tr},
			{Name: "root", FS: Squashfs, Start: 41 << 20, Size: 16 << 20, Contents: tr},
			{Name: "data", FS: Ext4, Start: 57 << 20, Size: 16 << 20, Label: "data", Contents: tr},
		}}
}

// writeGenimageConfig writes genimage.cfg for the same layout and returns the
// directory to run genimage in. squashfs is the body of genimage's squashfs
// block ("": its defaults, gzip in 4 KiB blocks).
func writeGenimageConfig(t testing.TB, l *Layout, src, squashfs string) string {
	dir := t.TempDir()
	var files []string
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		files = append(files, fmt.Sprintf("%q", e.Name()))
	}
	cfg := fmt.Sprintf(`image boot.vfat {
	vfat { label = "BOOT" files = { %s } }
	size = %d
}
image root.squashfs {
	squashfs { %s }
}
image data.ext4 {
	ext4 { label = "data" use-mke2fs = true }
	size = %d
}
image disk.img {
	hdimage { partition-table-type = "mbr" disk-signature = 0x%08x }
	size = %d
	partition boot { partition-type = 0xc bootable = true image = "boot.vfat" offset = %d size = %d }
	partition root { partition-type = 0x83 image = "root.squashfs" offset = %d size = %d }
	partition data { partition-type = 0x83 image = "data.ext4" offset = %d size = %d }
}
`, strings.Join(files, ", "), l.Partitions[0].Size, squashfs, l.Partitions[2].Size, l.DiskID(), l.Size,
		l.Partitions[0].Start, l.Partitions[0].Size, l.Partitions[1].Start, l.Partitions[1].Size,
		l.Partitions[2].Start, l.Partitions[2].Size)
	if err := os.WriteFile(filepath.Join(dir, "genimage.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func runGenimage(t testing.TB, dir, src string) string {
	out := filepath.Join(dir, "out")
	os.RemoveAll(out)
	os.RemoveAll(filepath.Join(dir, "tmp"))
	for _, d := range []string{"out", "tmp"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.RemoveAll(filepath.Join(dir, "tmp"))
	run(t.(*testing.T), "genimage", "--config", filepath.Join(dir, "genimage.cfg"), "--rootpath", src,
		"--inputpath", src, "--outputpath", out, "--tmppath", filepath.Join(dir, "tmp"))
	return filepath.Join(out, "disk.img")
}

var sfdiskPart = regexp.MustCompile(`(?m)^\S+?(\d+) : (.*)$`)

func partitionLines(t *testing.T, img string) []string {
	var out []string
	for _, m := range sfdiskPart.FindAllStringSubmatch(run(t, "sfdisk", "-d", img), -1) {
		out = append(out, m[1]+" : "+m[2])
	}
	return out
}

func TestSameAsGenimage(t *testing.T) {
	t.Parallel()
	need(t, "genimage", "mkdosfs", "mksquashfs", "mke2fs", "sfdisk", "mcopy", "unsquashfs", "debugfs")
	_, src := testTree(t)
	os.Remove(filepath.Join(src, "Mixed Case Name.Data")) // genimage's mcopy call does not quote names
	l := genimageLayout(t, src)
	kout := t.TempDir()
	rep, err := Build(context.Background(), l, kout, BuildOptions{NoXZ: true})
	if err != nil {
		t.Fatal(err)
	}
	kimg := filepath.Join(kout, ImageFile)
	gimg := runGenimage(t, writeGenimageConfig(t, l, src, ""), src)

	// The same partition table (and disk signature).
	kd, gd := partitionLines(t, kimg), partitionLines(t, gimg)
	if strings.Join(kd, "\n") != strings.Join(gd, "\n") || len(kd) != 3 {
		t.Errorf("partition tables differ:\nkiln:\n%s\ngenimage:\n%s", strings.Join(kd, "\n"), strings.Join(gd, "\n"))
	}
	if k, g := run(t, "sfdisk", "--disk-id", kimg), run(t, "sfdisk", "--disk-id", gimg); k != g {
		t.Errorf("disk ids differ: %s vs %s", k, g)
	}
	// The same files in every filesystem.
	for i, p := range rep.Partitions {
		var trees [2]string
		for j, img := range []string{kimg, gimg} {
			d := t.TempDir()
			at := fmt.Sprintf("%s@@%d", img, l.Partitions[i].Start)
			switch p.FS {
			case FAT32:
				run(t, "sh", "-c", fmt.Sprintf("cd %s && MTOOLS_SKIP_CHECK=1 mcopy -s -n -i %s '::*' .", d, at))
			case Squashfs:
				fs := extract(t, img, p)
				run(t, "unsquashfs", "-f", "-d", d, fs)
			case Ext4:
				fs := extract(t, img, p)
				run(t, "debugfs", "-R", "rdump / "+d, fs)
			}
			trees[j] = d
		}
		sameTree(t, src, trees[0])
		sameTree(t, src, trees[1])
	}
}

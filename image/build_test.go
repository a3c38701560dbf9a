package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps installs it): %v", tool, err)
		}
	}
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

// testTree returns a tree with files of assorted names and sizes, plus the
// host directory it was built from.
func testTree(t *testing.T) (*Tree, string) {
	dir := t.TempDir()
	files := map[string][]byte{
		"config.txt":                   []byte("arm_64bit=1\n"),
		"README.TXT":                   []byte("upper case 8.3\n"),
		"overlays/a-long-name.dtbo":    bytes.Repeat([]byte{1, 2, 3}, 3000),
		"overlays/sub/deeper/file.bin": bytes.Repeat([]byte("kiln"), 100000),
		"empty":                        nil,
		"Mixed Case Name.Data":         []byte("spaces and case"),
	}
	for p, b := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tr := NewTree()
	if err := tr.AddFile("", dir); err != nil {
		t.Fatal(err)
	}
	return tr, dir
}

func testLayout(t *testing.T, table string) (*Layout, string) {
	tr, dir := testTree(t)
	return &Layout{
		Table: table, Size: 96 << 20, Seed: "6b696c6e2074657374", Epoch: 1700000000,
		Partitions: []*Partition{
			{Name: "boot", FS: FAT32, Size: 40 << 20, Bootable: true, Label: "BOOT", Contents: tr},
			{Name: "root-a", FS: Squashfs, Size: 12 << 20, Slot: "a", Contents: tr},
			{Name: "root-b", FS: Raw, Size: 12 << 20, Slot: "b"},
			{Name: "data", FS: Ext4, Size: 16 << 20, Label: "data", Contents: tr},
			{Name: "spare", FS: Raw, Size: 4 << 20}, // mbr: makes root-b, data and spare logical partitions
		},
	}, dir
}

func extract(t *testing.T, img string, p PartitionReport) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), p.Name+".fs")
	run(t, "dd", "if="+img, "of="+out, "bs=512", fmt.Sprintf("skip=%d", p.Start/512), fmt.Sprintf("count=%d", p.Size/512), "status=none")
	return out
}

// sameTree compares every regular file under dir with the same path under src.
func sameTree(t *testing.T, src, got string) {
	t.Helper()
	n := 0
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		want, _ := os.ReadFile(p)
		have, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil {
			t.Errorf("%s: not read back: %v", rel, err)
			return nil
		}
		if !bytes.Equal(want, have) {
			t.Errorf("%s: read back %d bytes that differ from the source's %d", rel, len(have), len(want))
		}
		n++
		return nil
	})
	if n == 0 {
		t.Errorf("compared only %d files", n)
	}
}

func TestBuildValidatesWithRealTools(t *testing.T) {
	t.Parallel()
	need(t, "sfdisk", "fsck.vfat", "mcopy", "unsquashfs", "e2fsck", "debugfs", "bmaptool", "xz")
	for _, table := range []string{"mbr", "gpt"} {
		t.Run(table, func(t *testing.T) {
			t.Parallel()
			l, src := testLayout(t, table)
			out := t.TempDir()
			rep, err := Build(context.Background(), l, out, BuildOptions{XZ: XZOptions{BlockSize: 16 << 20}})
			if err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(out, ImageFile)

			// sfdisk shows the declared layout.
			dump := run(t, "sfdisk", "-d", img)
			if table == "mbr" {
				if !strings.Contains(dump, "label-id: 0x"+rep.DiskID) {
					t.Errorf("sfdisk -d: disk id %s missing:\n%s", rep.DiskID, dump)
				}
			} else if !strings.Contains(strings.ToLower(dump), "label-id: "+rep.DiskID) {
				t.Errorf("sfdisk -d: disk guid %s missing:\n%s", rep.DiskID, dump)
			}
			for i, p := range l.Partitions {
				line := fmt.Sprintf("%s%d : start=%12d, size=%12d", img, l.Number(i), p.Start/512, p.Size/512)
				if !strings.Contains(dump, line) {
					t.Errorf("sfdisk -d lacks %q:\n%s", line, dump)
				}
				if table == "gpt" && !strings.Contains(strings.ToLower(dump), "uuid="+l.PartUUID(i)) {
					t.Errorf("sfdisk -d lacks partition uuid %s", l.PartUUID(i))
				}
			}
			if table == "mbr" {
				if !strings.Contains(dump, "type=c, bootable") || !strings.Contains(dump, "type=f") {
					t.Errorf("boot partition is not FAT32 LBA and bootable, or no extended partition:\n%s", dump)
				}
				if l.Number(4) != 6 {
					t.Errorf("partition 5 is number %d, want logical 6", l.Number(4))
				}
			}

			// FAT32: fsck.vfat clean, mcopy reads every file back.
			boot := extract(t, img, rep.Partitions[0])
			run(t, "fsck.vfat", "-n", boot)
			fatOut := t.TempDir()
			run(t, "mcopy", "-s", "-n", "-i", boot, "::/config.txt", "::/README.TXT", "::/overlays", "::/empty", "::/Mixed Case Name.Data", fatOut)
			sameTree(t, src, fatOut)
			if lab := run(t, "mlabel", "-s", "-i", boot, "::"); !strings.Contains(lab, "BOOT") {
				t.Errorf("volume label: %q", lab)
			}

			// squashfs: unsquashfs lists every file and extracts them equal.
			root := extract(t, img, rep.Partitions[1])
			list := run(t, "unsquashfs", "-l", root)
			for _, f := range []string{"config.txt", "overlays/sub/deeper/file.bin", "empty", "Mixed Case Name.Data"} {
				if !strings.Contains(list, "squashfs-root/"+f) {
					t.Errorf("unsquashfs -l lacks %s:\n%s", f, list)
				}
			}
			sqOut := filepath.Join(t.TempDir(), "x")
			run(t, "unsquashfs", "-d", sqOut, root)
			sameTree(t, src, sqOut)

			// ext4: e2fsck -fn clean, files read back with debugfs rdump.
			data := extract(t, img, rep.Partitions[3])
			run(t, "e2fsck", "-fn", data)
			e4Out := t.TempDir()
			run(t, "debugfs", "-R", "rdump / "+e4Out, data)
			sameTree(t, src, e4Out)
			if dumpe2 := run(t, "dumpe2fs", "-h", data); !strings.Contains(dumpe2, rep.Partitions[3].FSUUID) {
				t.Errorf("ext4 uuid %s not in dumpe2fs", rep.Partitions[3].FSUUID)
			}

			// Inspect finds the same table, partitions and filesystems.
			info, err := Inspect(img)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, p := range info.Partitions {
				got[p.PartUUID] = p.FS
			}
			wantFS := map[string]string{FAT32: FAT32, Squashfs: Squashfs, Ext4: Ext4, Raw: "empty"}
			for i, p := range l.Partitions {
				if got[l.PartUUID(i)] != wantFS[p.FS] {
					t.Errorf("inspect: partition %s (%s) found as %q", p.Name, l.PartUUID(i), got[l.PartUUID(i)])
				}
			}
			if info.Table != table || info.DiskID != rep.DiskID {
				t.Errorf("inspect: table %s disk id %s, want %s %s", info.Table, info.DiskID, table, rep.DiskID)
			}

			// .xz and .bmap: xz -t, xz -dc, bmaptool copy all give the .img bytes.
			xzPath := filepath.Join(out, XZFile)
			run(t, "xz", "-t", xzPath)
			want := fileSum(t, img)
			dec := filepath.Join(t.TempDir(), "dec.img")
			run(t, "sh", "-c", "xz -dc "+xzPath+" > "+dec)
			if fileSum(t, dec) != want {
				t.Error("xz -dc output differs from image.img")
			}
			copied := filepath.Join(t.TempDir(), "copy.img")
			run(t, "bmaptool", "copy", "--bmap", filepath.Join(out, BmapFile), xzPath, copied)
			if fileSum(t, copied) != want {
				t.Error("bmaptool copy output differs from image.img")
			}
		})
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func TestBuildIsReproducible(t *testing.T) {
	t.Parallel()
	var sums [2]map[string]string
	for i := range sums {
		l, _ := testLayout(t, "mbr")
		out := filepath.Join(t.TempDir(), fmt.Sprintf("build-%d", i))
		rep, err := Build(context.Background(), l, out, BuildOptions{XZ: XZOptions{BlockSize: 16 << 20, Workers: i + 1}})
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = rep.Files
		for name, sum := range rep.Files {
			if got := fileSum(t, filepath.Join(out, name)); got != sum {
				t.Errorf("%s: report says %s, file is %s", name, sum, got)
			}
		}
	}
	for _, name := range []string{ImageFile, XZFile, BmapFile} {
		if sums[0][name] == "" || sums[0][name] != sums[1][name] {
			t.Errorf("%s differs between two builds: %s vs %s", name, sums[0][name], sums[1][name])
		}
	}
}

func TestBuildRejectsBadInputs(t *testing.T) {
	t.Parallel()
	tr, _ := testTree(t)
	bad := NewTree()
	bad.AddBytes("what?.txt", []byte("x"), 0o644)
	bigFile := filepath.Join(t.TempDir(), "big")
	f, _ := os.Create(bigFile)
	rnd := make([]byte, 12<<20)
	rand.NewChaCha8([32]byte{1}).Read(rnd)
	f.Write(rnd)
	f.Close()
	small := NewTree()
	smallFile := filepath.Join(t.TempDir(), "small")
	os.WriteFile(smallFile, rnd[:3<<20], 0o644)
	small.AddFile("small", smallFile)
	cases := []struct {
		name  string
		parts []*Partition
		want  error
	}{
		{"overlap", []*Partition{{Name: "a", FS: FAT32, Start: 1 << 20, Size: 40 << 20}, {Name: "b", FS: Raw, Start: 20 << 20, Size: 8 << 20}}, ErrLayout},
		{"exceeds disk", []*Partition{{Name: "a", FS: FAT32, Start: 1 << 20, Size: 40 << 20}, {Name: "b", FS: Raw, Size: 30 << 20}}, ErrLayout},
		{"name FAT cannot hold", []*Partition{{Name: "a", FS: FAT32, Size: 40 << 20, Contents: bad}}, ErrBadName},
		{"root does not fit its slot", []*Partition{{Name: "a", FS: Squashfs, Size: 2 << 20, Contents: small}}, ErrNoSpace},
		{"files do not fit FAT", []*Partition{{Name: "a", FS: FAT32, Size: 34 << 20, Contents: func() *Tree {
			t := NewTree()
			for i := 0; i < 3; i++ {
				t.AddFile(fmt.Sprintf("big%d", i), bigFile)
			}
			return t
		}()}}, ErrNoSpace},
		{"ext4 too full", []*Partition{{Name: "a", FS: Ext4, Size: 2 << 20, Contents: small}}, ErrNoSpace},
		{"fat too small", []*Partition{{Name: "a", FS: FAT32, Size: 16 << 20, Contents: tr}}, ErrLayout},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			out := filepath.Join(parent, "out")
			l := &Layout{Table: "mbr", Size: 64 << 20, Seed: "s", Epoch: 1, Partitions: c.parts}
			_, err := Build(context.Background(), l, out, BuildOptions{NoXZ: true})
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			ents, _ := os.ReadDir(parent)
			if len(ents) != 0 {
				t.Errorf("output left behind: %v", ents)
			}
		})
	}
	var tr2 = NewTree()
	if err := tr2.AddFile("x", "/nonexistent/kiln/file"); !errors.Is(err, ErrMissingFile) {
		t.Errorf("missing file: err = %v", err)
	}
}

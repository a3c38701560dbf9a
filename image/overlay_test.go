package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/beneath"
)

// A recipe's overlay laid over an assembled root: existing directories keep
// their modes, the root's relative directory symlinks are followed, a file
// replaces a symlink instead of writing through it, and nothing reaches
// outside the root through an absolute symlink.
func TestOverlay(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{"root/root", "root/usr/lib/systemd", "root/etc", "outside"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "root"), 0o700)
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.WriteFile(filepath.Join(outside, "passwd"), []byte("host\n"), 0o644)
	os.Symlink(filepath.Join(outside, "passwd"), filepath.Join(root, "etc/motd"))
	os.Symlink(outside, filepath.Join(root, "etc/escape"))

	tr := NewTree()
	tr.AddBytes("root/.profile", []byte("x\n"), 0o644)
	tr.AddBytes("lib/systemd/kiln.service", []byte("unit\n"), 0o644)
	tr.AddBytes("etc/motd", []byte("kiln\n"), 0o644)
	if err := tr.Overlay(root, 1751414400); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(root, "root")); fi.Mode().Perm() != 0o700 {
		t.Errorf("/root became %v, want it left 0700", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/kiln.service")); string(b) != "unit\n" {
		t.Errorf("lib/systemd/kiln.service did not land in usr/lib through the root's lib symlink: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "passwd")); string(b) != "host\n" {
		t.Errorf("the overlay wrote through a symlink onto the host: %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(root, "etc/motd")); !fi.Mode().IsRegular() {
		t.Errorf("etc/motd is %v, want the overlay's regular file", fi.Mode())
	}
	fi, _ := os.Stat(filepath.Join(root, "etc"))
	if fi.ModTime().Unix() != 1751414400 {
		t.Errorf("etc's time %v was not clamped", fi.ModTime())
	}

	bad := NewTree()
	bad.AddBytes("etc/escape/evil", []byte("x"), 0o644)
	err := bad.Overlay(root, 1751414400)
	if !errors.Is(err, beneath.ErrEscapes) {
		t.Errorf("overlay through an absolute symlink: %v, want ErrEscapes", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
		t.Error("a file was written outside the root")
	}
}

func TestPrebuiltPartition(t *testing.T) {
	l := &Layout{Table: "mbr", Size: 8 << 20, Partitions: []*Partition{
		{Name: "root", FS: Squashfs, Size: 4 << 20, Image: "root.squashfs", Contents: NewTree()}}}
	if err := l.Resolve(); !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), "prebuilt") {
		t.Errorf("a prebuilt image with contents: %v", err)
	}
	l.Partitions[0].Contents, l.Partitions[0].FS = nil, FAT32
	if err := l.Resolve(); !errors.Is(err, ErrLayout) {
		t.Errorf("a prebuilt image in a FAT partition: %v", err)
	}
	// A squashfs image too big for its partition is refused with ErrNoSpace.
	dir := t.TempDir()
	sq := filepath.Join(dir, "root.squashfs")
	os.WriteFile(sq, make([]byte, 5<<20), 0o644)
	l = &Layout{Table: "mbr", Size: 8 << 20, Partitions: []*Partition{{Name: "root", FS: Squashfs, Size: 4 << 20, Image: sq}}}
	if _, err := Build(t.Context(), l, filepath.Join(dir, "out"), BuildOptions{NoXZ: true}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("a 5 MiB root in a 4 MiB partition: %v", err)
	}
}

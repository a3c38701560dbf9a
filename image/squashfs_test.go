package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMakeSquashfsTree: a tree's squashfs holds what the tree says and
// nothing of the host files it was read from. Two trees from host files
// with other modes, times and extended attributes give the same bytes;
// unsquashfs reads back every entry root-owned, with the tree's modes,
// contents and link targets, every time SOURCE_DATE_EPOCH, no xattrs.
func TestMakeSquashfsTree(t *testing.T) {
	t.Parallel()
	need(t, "mksquashfs", "unsquashfs")
	const epoch = 1700000000
	mkTree := func(i int) *Tree {
		src := t.TempDir()
		files := map[string]os.FileMode{"bin/tool": 0o775, "etc/conf": 0o664, "big.bin": 0o640}
		if i == 1 {
			files = map[string]os.FileMode{"bin/tool": 0o700, "etc/conf": 0o600, "big.bin": 0o644}
		}
		for p, m := range files {
			full := filepath.Join(src, p)
			os.MkdirAll(filepath.Dir(full), 0o700+fs.FileMode(i)*0o55)
			data := []byte("content of " + p)
			if p == "big.bin" {
				data = benchPayload(1 << 20)
			}
			if err := os.WriteFile(full, data, m); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(full, m); err != nil {
				t.Fatal(err)
			}
			when := time.Unix(int64(1e9+i*12345), 0)
			os.Chtimes(full, when, when)
			if i == 1 {
				unix.Lsetxattr(full, "user.kiln", []byte("host only"), 0) // where the host allows it
			}
		}
		tr := NewTree()
		if err := tr.AddFile("", src); err != nil {
			t.Fatal(err)
		}
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(tr.AddBytes("secret/key", []byte("k"), 0o600))
		must(tr.AddDir("secret", 0o700))
		must(tr.AddDir("empty", 0o755))
		must(tr.AddSymlink("etc/link", "../bin/tool"))
		return tr
	}
	var imgs [2][]byte
	var path string
	for i := range imgs {
		p, err := MakeSquashfs(context.Background(), mkTree(i), epoch, "", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if imgs[i], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
		path = p
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Fatalf("two trees with the same content give different squashfs (%d and %d bytes)", len(imgs[0]), len(imgs[1]))
	}
	if mk := binary.LittleEndian.Uint32(imgs[0][8:12]); mk != epoch {
		t.Errorf("superblock mkfs time %d, want %d", mk, epoch)
	}
	if s := run(t, "unsquashfs", "-s", path); !strings.Contains(s, "Xattrs are not stored") {
		t.Errorf("unsquashfs -s: xattrs stored:\n%s", s)
	}

	want := map[string]string{ // unsquashfs -lln's mode column
		"": "drwxr-xr-x", "bin": "drwxr-xr-x", "bin/tool": "-rwxr-xr-x", "etc": "drwxr-xr-x",
		"etc/conf": "-rw-r--r--", "etc/link": "lrwxrwxrwx", "big.bin": "-rw-r--r--",
		"secret": "drwx------", "secret/key": "-rw-------", "empty": "drwxr-xr-x",
	}
	seen := 0
	for _, line := range strings.Split(run(t, "unsquashfs", "-lln", path), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "squashfs-root") {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(f[5], "squashfs-root"), "/")
		if f[1] != "0/0" {
			t.Errorf("%s: owner %s, want 0/0", rel, f[1])
		}
		if m, ok := want[rel]; !ok {
			t.Errorf("%s: not in the tree", rel)
		} else if f[0] != m {
			t.Errorf("%s: mode %s, want %s", rel, f[0], m)
		}
		seen++
	}
	if seen != len(want) {
		t.Errorf("unsquashfs -lln lists %d entries, want %d", seen, len(want))
	}

	out := filepath.Join(t.TempDir(), "x")
	run(t, "unsquashfs", "-no-xattrs", "-d", out, path)
	if got, _ := os.ReadFile(filepath.Join(out, "big.bin")); !bytes.Equal(got, benchPayload(1<<20)) {
		t.Errorf("big.bin read back differs")
	}
	if got, _ := os.ReadFile(filepath.Join(out, "etc/conf")); string(got) != "content of etc/conf" {
		t.Errorf("etc/conf read back %q", got)
	}
	if l, err := os.Readlink(filepath.Join(out, "etc/link")); err != nil || l != "../bin/tool" {
		t.Errorf("etc/link -> %q, %v", l, err)
	}
	filepath.Walk(out, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink == 0 && fi.ModTime().Unix() != epoch {
			t.Errorf("%s: mtime %d, want %d", p, fi.ModTime().Unix(), epoch)
		}
		return nil
	})
}

// TestMakeSquashfsDirOwners: RootOwned stores root as every owner; without
// it the owners on disk are kept (an assembled Debian root's). Needs root
// to give files other owners.
func TestMakeSquashfsDirOwners(t *testing.T) {
	t.Parallel()
	need(t, "mksquashfs", "unsquashfs")
	dir := t.TempDir()
	f := filepath.Join(dir, "owned")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(f, 1234, 5678); err != nil {
		t.Skipf("cannot give a file another owner (not root): %v", err)
	}
	for _, rootOwned := range []bool{true, false} {
		out := filepath.Join(t.TempDir(), "fs.img")
		if err := MakeSquashfsDir(context.Background(), dir, out, SquashfsOptions{Epoch: 1, RootOwned: rootOwned}); err != nil {
			t.Fatal(err)
		}
		want := "1234/5678"
		if rootOwned {
			want = "0/0"
		}
		l := run(t, "unsquashfs", "-lln", out)
		found := false
		for _, line := range strings.Split(l, "\n") {
			if f := strings.Fields(line); len(f) == 6 && f[5] == "squashfs-root/owned" {
				found = f[1] == want
			}
		}
		if !found {
			t.Errorf("RootOwned %v: want owner %s:\n%s", rootOwned, want, l)
		}
	}
	if err := MakeSquashfsDir(context.Background(), dir, filepath.Join(t.TempDir(), "x"), SquashfsOptions{Compression: "lzo4"}); err == nil {
		t.Errorf("an unknown compression was accepted")
	}
}

// TestSquashfsCompression: a tree's squashfs is zstd unless its partition
// names another compression, the superblock says so (compression id at byte
// 20: 1 gzip, 4 xz, 6 zstd), unsquashfs reads every choice back to the same
// content, and a layout naming an unknown compression, or one for a
// filesystem that has none, is refused before anything is made.
func TestSquashfsCompression(t *testing.T) {
	t.Parallel()
	need(t, "mksquashfs", "unsquashfs")
	tr := NewTree()
	body := bytes.Repeat([]byte("kiln squashfs compression "), 40000)
	if err := tr.AddBytes("data/text", body, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		id   uint16
	}{{"", 6}, {"zstd", 6}, {"gzip", 1}, {"xz", 4}} {
		p, err := MakeSquashfs(context.Background(), tr, 1700000000, c.name, t.TempDir())
		if err != nil {
			t.Fatalf("%q: %v", c.name, err)
		}
		img, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if id := binary.LittleEndian.Uint16(img[20:22]); id != c.id {
			t.Errorf("compression %q: superblock says compression id %d, want %d", c.name, id, c.id)
		}
		dest := filepath.Join(t.TempDir(), "x")
		run(t, "unsquashfs", "-d", dest, p)
		if got, err := os.ReadFile(filepath.Join(dest, "data/text")); err != nil || !bytes.Equal(got, body) {
			t.Errorf("compression %q: unsquashfs gives back %d bytes (%v), want the %d written", c.name, len(got), err, len(body))
		}
	}
	for _, p := range []*Partition{
		{Name: "root", FS: Squashfs, Size: 4 << 20, Compression: "lzo"},
		{Name: "root", FS: Ext4, Size: 4 << 20, Compression: "zstd"},
	} {
		l := &Layout{Table: "mbr", Size: 8 << 20, Seed: "s", Partitions: []*Partition{p}}
		if err := l.Resolve(); !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), "compression") {
			t.Errorf("%s partition with compression %q: %v, want ErrLayout naming the compression", p.FS, p.Compression, err)
		}
	}
}

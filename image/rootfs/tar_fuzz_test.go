package rootfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/image/rootfs"
)

// FuzzExtractTar: a stored root archive is hostile input (the store can be
// tampered with between its seal check and the unpack). Whatever the bytes,
// ExtractTar writes nothing outside its directory: a file, a directory and
// a symlink beside it (the targets an archive would aim at through "..",
// absolute names, symlinks or hard links) are left exactly as they were,
// and nothing else appears there.
func FuzzExtractTar(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("ExtractTar sets owners and makes device nodes: root only")
	}
	type ent struct {
		name, link string
		typ        byte
		body       string
	}
	archive := func(ents ...ent) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range ents {
			h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o4755, Format: tar.FormatPAX,
				Size: int64(len(e.body)), ModTime: time.Unix(1751414400, 0),
				PAXRecords: map[string]string{"SCHILY.xattr.user.kiln": "x"}}
			if e.typ != tar.TypeReg {
				h.Size = 0
			}
			tw.WriteHeader(h)
			if h.Size > 0 {
				tw.Write([]byte(e.body))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	f.Add(archive(ent{name: "./", typ: tar.TypeDir}, ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/passwd", typ: tar.TypeReg, body: "root:x:0:0::/root:/bin/sh\n"},
		ent{name: "etc/pw", link: "etc/passwd", typ: tar.TypeLink}, ent{name: "bin", link: "usr/bin", typ: tar.TypeSymlink},
		ent{name: "null", typ: tar.TypeChar}, ent{name: "fifo", typ: tar.TypeFifo}))
	f.Add(archive(ent{name: "up", link: "..", typ: tar.TypeSymlink}, ent{name: "up/outside", typ: tar.TypeReg, body: "x"}))
	f.Add(archive(ent{name: "../outside", typ: tar.TypeReg, body: "x"}))
	f.Add(archive(ent{name: "/outside", typ: tar.TypeReg, body: "x"}))
	f.Add(archive(ent{name: "h", link: "../outside", typ: tar.TypeLink}))
	f.Add(archive(ent{name: "d/", typ: tar.TypeDir}, ent{name: "d/../../outside", typ: tar.TypeReg, body: "x"}))
	f.Add(archive(ent{name: "f", typ: tar.TypeReg, body: "a"}, ent{name: "f", typ: tar.TypeReg, body: "b"}))
	var root bytes.Buffer
	dir := f.TempDir()
	os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "usr/bin/sh"), []byte("#!"), 0o4755)
	os.Link(filepath.Join(dir, "usr/bin/sh"), filepath.Join(dir, "usr/bin/dash"))
	os.Symlink("usr/bin", filepath.Join(dir, "bin"))
	if err := rootfs.WriteTar(context.Background(), dir, &root); err != nil {
		f.Fatal(err)
	}
	f.Add(root.Bytes())

	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		if err := os.WriteFile(filepath.Join(parent, "outside"), []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(parent, "etc"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("outside", filepath.Join(parent, "link")); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(parent, "root")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		rootfs.ExtractTar(context.Background(), bytes.NewReader(data), out)

		ents, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 4 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("beside the directory now: %q, want outside, etc, link, root", names)
		}
		fi, err := os.Lstat(filepath.Join(parent, "outside"))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || fi.Size() != 4 {
			t.Fatalf("the file beside the directory changed: %v %v", fi, err)
		}
		if b, _ := os.ReadFile(filepath.Join(parent, "outside")); string(b) != "keep" {
			t.Fatalf("the file beside the directory now holds %q", b)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink != 1 {
			t.Fatalf("the file beside the directory gained a hard link")
		}
		if inner, err := os.ReadDir(filepath.Join(parent, "etc")); err != nil || len(inner) != 0 {
			t.Fatalf("the directory beside it changed: %d entries, %v", len(inner), err)
		}
		if fi, err := os.Lstat(filepath.Join(parent, "etc")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("the directory beside it changed mode: %v %v", fi, err)
		}
		if l, err := os.Readlink(filepath.Join(parent, "link")); err != nil || l != "outside" {
			t.Fatalf("the symlink beside it changed: %q %v", l, err)
		}
	})
}

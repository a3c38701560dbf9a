package rootfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/image/rootfs/rootfstest"
)

// withTimes is rootfstest.Walk's view (kind, mode, owners, content, link
// count, extended attributes) with each modification time to the
// nanosecond.
func withTimes(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for p, e := range rootfstest.Walk(t, root) {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		out[p] = fmt.Sprintf("%v mtime %s", e, time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC().Format(time.RFC3339Nano))
	}
	return out
}

// TestTarRoundTrip: a tree with what a Debian root holds (a set-uid
// program owned by root, a set-gid directory owned by another group, a
// file capability, a user attribute, hard links, a symlink, a device node,
// a FIFO, a read-only directory, times to the nanosecond) comes back from
// rootfs.WriteTar and rootfs.ExtractTar as it was, and the same tree gives the same
// archive bytes.
func TestTarRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("owners, device nodes and security.capability need root")
	}
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(src, "usr/bin/su"), []byte("su"), 0o755))
	must(unix.Chmod(filepath.Join(src, "usr/bin/su"), 0o4755))
	must(os.WriteFile(filepath.Join(src, "usr/bin/ping"), []byte("ping"), 0o755))
	// cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
	capv := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(unix.Lsetxattr(filepath.Join(src, "usr/bin/ping"), "security.capability", capv, 0))
	must(unix.Lsetxattr(filepath.Join(src, "usr/bin/ping"), "user.kiln", []byte("yes"), 0))
	must(os.Link(filepath.Join(src, "usr/bin/su"), filepath.Join(src, "usr/bin/su2")))
	must(os.Symlink("su", filepath.Join(src, "usr/bin/sudo")))
	must(os.MkdirAll(filepath.Join(src, "var/mail"), 0o755))
	must(os.Chown(filepath.Join(src, "var/mail"), 0, 8))
	must(unix.Chmod(filepath.Join(src, "var/mail"), 0o2775))
	must(os.MkdirAll(filepath.Join(src, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(src, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(src, "dev/initctl"), 0o600))
	must(os.WriteFile(filepath.Join(src, "etc-shadow"), []byte("root:*:"), 0o640))
	must(os.Chown(filepath.Join(src, "etc-shadow"), 0, 42))
	must(os.MkdirAll(filepath.Join(src, "ro/sub"), 0o755))
	must(os.WriteFile(filepath.Join(src, "ro/sub/f"), nil, 0o644))
	must(unix.Chmod(filepath.Join(src, "ro"), 0o555))
	ts := time.Unix(1751414400, 123456789)
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error {
		unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{unix.NsecToTimespec(ts.UnixNano()), unix.NsecToTimespec(ts.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	})
	old := time.Unix(1600000000, 0)
	must(os.Chtimes(filepath.Join(src, "ro/sub/f"), old, old))

	var a, b bytes.Buffer
	must(rootfs.WriteTar(context.Background(), src, &a))
	must(rootfs.WriteTar(context.Background(), src, &b))
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two archives of one tree differ")
	}
	dst := filepath.Join(t.TempDir(), "dst")
	must(os.Mkdir(dst, 0o755))
	must(rootfs.ExtractTar(context.Background(), bytes.NewReader(a.Bytes()), dst))
	want, got := withTimes(t, src), withTimes(t, dst)
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: unpacked %q, archived %q", p, got[p], w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unpacked, never archived", p)
		}
	}
	var s1, s2 unix.Stat_t
	unix.Lstat(filepath.Join(dst, "usr/bin/su"), &s1)
	unix.Lstat(filepath.Join(dst, "usr/bin/su2"), &s2)
	if s1.Ino != s2.Ino {
		t.Errorf("the hard link came back as a copy")
	}
}

// TestExtractTarRefuses: archives rootfs.WriteTar never writes are refused with
// rootfs.ErrArchive, and nothing is written outside the directory.
func TestExtractTarRefuses(t *testing.T) {
	type ent struct {
		name, link string
		typ        byte
	}
	dir := func(n string) ent { return ent{name: n + "/", typ: tar.TypeDir} }
	reg := func(n string) ent { return ent{name: n, typ: tar.TypeReg} }
	for _, c := range []struct {
		what string
		ents []ent
	}{
		{"dot-dot", []ent{reg("../escaped")}},
		{"dot-dot inside", []ent{dir("a"), reg("a/../../escaped")}},
		{"absolute", []ent{reg("/tmp/escaped")}},
		{"beneath a symlink", []ent{{name: "l", link: "..", typ: tar.TypeSymlink}, reg("l/escaped")}},
		{"parent never made", []ent{reg("nowhere/escaped")}},
		{"beneath a file", []ent{reg("f"), reg("f/escaped")}},
		{"twice", []ent{reg("f"), reg("f")}},
		{"dir after file", []ent{reg("f"), dir("f")}},
		{"hard link to a later file", []ent{{name: "h", link: "f", typ: tar.TypeLink}, reg("f")}},
		{"hard link outside", []ent{{name: "h", link: "../etc/passwd", typ: tar.TypeLink}}},
		{"hard link to a directory", []ent{dir("d"), {name: "h", link: "d", typ: tar.TypeLink}}},
		{"unknown type", []ent{{name: "x", typ: 'Z'}}},
	} {
		t.Run(c.what, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range c.ents {
				h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Format: tar.FormatPAX,
					Uid: os.Geteuid(), Gid: os.Getegid(), ModTime: time.Unix(1751414400, 0)}
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			parent := t.TempDir()
			out := filepath.Join(parent, "root")
			os.Mkdir(out, 0o755)
			err := rootfs.ExtractTar(context.Background(), &buf, out)
			if !errors.Is(err, rootfs.ErrArchive) {
				t.Fatalf("rootfs.ExtractTar: %v, want rootfs.ErrArchive", err)
			}
			if _, err := os.Lstat(filepath.Join(parent, "escaped")); err == nil {
				t.Errorf("a file was written outside the directory")
			}
		})
	}
}

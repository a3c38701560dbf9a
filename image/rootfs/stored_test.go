package rootfs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/image/rootfs/rootfstest"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/store"
)

func parseSmallLock() (*debian.Lock, error) {
	data, err := os.ReadFile("testdata/small.lock")
	if err != nil {
		return nil, err
	}
	return debian.ParseLock(data)
}

// TestRootDerivation: the root's hash changes with the lock, the epoch and
// the architecture, and with nothing the image adds.
func TestRootDerivation(t *testing.T) {
	l, err := parseSmallLock()
	if err != nil {
		t.Fatal(err)
	}
	base := rootfs.RootDerivation(l, epoch)
	if base != rootfs.RootDerivation(l, epoch) {
		t.Fatal("rootfs.RootDerivation is not a function of its inputs")
	}
	if rootfs.RootDerivation(l, epoch+1) == base {
		t.Error("SOURCE_DATE_EPOCH does not change the root derivation")
	}
	l2 := *l
	l2.Packages = append(l2.Packages[:0:0], l.Packages...)
	l2.Packages[3].SHA256 = strings.Repeat("0", 64)
	if rootfs.RootDerivation(&l2, epoch) == base {
		t.Error("a package's sha256 does not change the root derivation")
	}
	l3 := *l
	l3.Request.Arch = "armhf"
	if rootfs.RootDerivation(&l3, epoch) == base {
		t.Error("the architecture does not change the root derivation")
	}
}

// TestRealiseRoot: the first rootfs.Realise assembles the small lock's root and
// stores it; the second finds it without assembling (its .debs are not
// even asked for) and unpacks the very tree Assemble made (owners, modes,
// times, contents). A stored archive changed afterwards is refused by the
// store's seal (store.ErrTampered) and never assembled over; one changed
// between verification and unpacking is refused by Unpack.
func TestRealiseRoot(t *testing.T) {
	needSandbox(t)
	l, debs := smallLock(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	req := rootfs.Request{Lock: l, Epoch: epoch, Log: t.Logf, Debs: func(context.Context) ([]rootfs.Deb, error) {
		asked.Add(1)
		return debs, nil
	}}
	ctx := context.Background()
	r1, err := rootfs.Realise(ctx, st, req)
	if errors.Is(err, rootfs.ErrSandbox) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if r1.How != store.Built || asked.Load() != 1 {
		t.Fatalf("first realise: %s, .debs asked for %d times; want built, once", r1.How, asked.Load())
	}
	if r1.Derivation != rootfs.RootDerivation(l, epoch) || !strings.HasPrefix(filepath.Base(r1.Path), r1.Derivation[:32]+"-rootfs-arm64") {
		t.Errorf("entry %s for derivation %s", r1.Path, r1.Derivation)
	}
	r2, err := rootfs.Realise(ctx, st, req)
	if err != nil {
		t.Fatal(err)
	}
	if r2.How != store.Hit || asked.Load() != 1 || r2.Path != r1.Path {
		t.Fatalf("second realise: %s at %s, .debs asked for %d times; want a hit, no assembly", r2.How, r2.Path, asked.Load())
	}
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	if err := r2.Unpack(ctx, dir); err != nil {
		t.Fatal(err)
	}
	want, got := rootfstest.Walk(t, firstAssembly(t, debs)), rootfstest.Walk(t, dir)
	for p, w := range want {
		if g, ok := got[p]; !ok || g != w {
			t.Errorf("%s: unpacked %v (mtime %d), assembled %v (mtime %d)", p, g, g.Mtime, w, w.Mtime)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unpacked, not assembled", p)
		}
	}

	// One byte of the stored archive changed (as root may): the seal
	// refuses the entry before anything of it is used, and no assembly
	// runs over it.
	archive := filepath.Join(r1.Path, rootfs.ArchiveFile)
	flip := func() {
		os.Chmod(archive, 0o644)
		f, err := os.OpenFile(archive, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, 4096)
		b[0] ^= 0xff
		f.WriteAt(b, 4096)
		f.Close()
		os.Chmod(archive, 0o444)
	}
	flip()
	_, err = rootfs.Realise(ctx, st, req)
	if !errors.Is(err, store.ErrTampered) || !strings.Contains(err.Error(), rootfs.ArchiveFile) {
		t.Errorf("realise of a changed root: %v, want ErrTampered naming %s", err, rootfs.ArchiveFile)
	}
	if asked.Load() != 1 {
		t.Errorf("a changed root was assembled over")
	}
	// Changed back, it verifies again; changed after that verification,
	// Unpack (which hashes what it reads) refuses it.
	flip()
	r3, err := rootfs.Realise(ctx, st, req)
	if err != nil {
		t.Fatal(err)
	}
	flip()
	dir3 := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir3, 0o755)
	if err := r3.Unpack(ctx, dir3); !errors.Is(err, store.ErrTampered) {
		t.Errorf("unpack of a root changed after verification: %v, want ErrTampered", err)
	}
}

package recipebuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// smallRootRecipe writes an image recipe whose squashfs root is image/rootfs's
// small locked set (25 packages, .debs cached in
// $HOME/.cache/kiln-test/rootfs-store) with one overlay file, etc/motd,
// holding motd.
func smallRootRecipe(t *testing.T, motd string) string {
	t.Helper()
	lockData, err := os.ReadFile("../rootfs/testdata/small.lock")
	if err != nil {
		t.Fatal(err)
	}
	l, err := debian.ParseLock(lockData)
	if err != nil {
		t.Fatal(err)
	}
	// image/rootfs's tests re-resolve the request once the archive moved
	// past the fixture; the same stand-in serves here.
	if home, err := os.UserHomeDir(); err == nil {
		if data, err := os.ReadFile(filepath.Join(home, ".cache/kiln-test/rootfs-lock/small.lock")); err == nil {
			if rl, err := debian.ParseLock(data); err == nil && rl.RequestHash == l.RequestHash {
				l = rl
			}
		}
	}
	dir := filepath.Join(t.TempDir(), "small-root")
	if err := os.MkdirAll(filepath.Join(dir, "overlay/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := debian.WriteLock(dir, l); err != nil {
		t.Fatal(err)
	}
	q := func(s []string) string { return `["` + strings.Join(s, `", "`) + `"]` }
	recipe := fmt.Sprintf(`name = "small-root"
version = "1"
kind = "image"
board = "rpi-3b"
files = ["overlay/etc/*"]
[image]
table = "mbr"
size = "64MiB"
source_date_epoch = 1751414400
[image.rootfs]
arch = %q
suites = %s
components = %s
packages = %s
essential = %v
[[image.partitions]]
name = "root"
fs = "squashfs"
size = "48MiB"
contents = [{ from = "rootfs", to = "/" }, { from = "src:overlay", to = "/" }]
`, l.Request.Arch, q(l.Request.Suites), q(l.Request.Components), q(l.Request.Packages), l.Request.Essential)
	if err := os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay/etc/motd"), []byte(motd), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// seedDebs fills st with hard links to the .debs image/rootfs's tests
// fetched (fetched here, once, if they are not there).
func seedDebs(t *testing.T, st *store.Store) {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory for the test cache")
	}
	cache := filepath.Join(home, ".cache/kiln-test/rootfs-store")
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if _, name, _ := strings.Cut(e.Name(), "-"); e.IsDir() && strings.HasPrefix(name, "deb-") {
			if out, err := exec.Command("cp", "-al", filepath.Join(cache, e.Name()), st.Root).CombinedOutput(); err != nil {
				t.Fatalf("cp -al: %v: %s", err, out)
			}
		}
	}
}

// TestOverlayChangeReusesRoot: two images that differ only in an overlay
// file, built into one store, share one Debian root: the first build
// assembles and stores it, the second finds it (no assembly) and lays its own overlay over it; both roots hold dpkg's
// database, each its own motd. A stored root whose archive was changed is
// refused by the store's seal: the build fails with store.ErrTampered and
// neither uses nor assembles over it.
func TestOverlayChangeReusesRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("assembling a root filesystem needs root (identity-mapped user namespace)")
	}
	for _, p := range []string{"qemu-aarch64-static", "dpkg-deb", "mksquashfs", "unsquashfs"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (make deps installs it)", p)
		}
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	seedDebs(t, st)
	var mu sync.Mutex
	var lines []string
	build := func(motd string) (*Result, *store.Realised, []string, error) {
		mu.Lock()
		lines = nil
		mu.Unlock()
		opts := Options{Store: st, NoXZ: true, Log: func(format string, a ...any) {
			mu.Lock()
			lines = append(lines, fmt.Sprintf(format, a...))
			mu.Unlock()
		}}
		res, rz, err := Realise(context.Background(), smallRootRecipe(t, motd), opts)
		mu.Lock()
		defer mu.Unlock()
		return res, rz, append([]string(nil), lines...), err
	}
	count := func(lines []string, s string) int {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, s) {
				n++
			}
		}
		return n
	}
	motd := func(rz *store.Realised, res *Result) string {
		t.Helper()
		var p *MetaPartition
		for i := range res.Metadata.Partitions {
			if res.Metadata.Partitions[i].Name == "root" {
				p = &res.Metadata.Partitions[i]
			}
		}
		sq := filepath.Join(t.TempDir(), "root.squashfs")
		if out, err := exec.Command("dd", "if="+filepath.Join(rz.Path, "image.img"), "of="+sq, "bs=1M", "status=none",
			fmt.Sprintf("skip=%d", p.Start), fmt.Sprintf("count=%d", p.Size), "iflag=skip_bytes,count_bytes").CombinedOutput(); err != nil {
			t.Fatalf("dd: %v: %s", err, out)
		}
		files := filepath.Join(t.TempDir(), "files")
		if out, err := exec.Command("unsquashfs", "-n", "-d", files, sq, "etc/motd", "var/lib/dpkg/status").CombinedOutput(); err != nil {
			t.Fatalf("unsquashfs: %v: %s", err, out)
		}
		if st, err := os.Stat(filepath.Join(files, "var/lib/dpkg/status")); err != nil || st.Size() == 0 {
			t.Errorf("the image's root has no dpkg database: %v", err)
		}
		b, _ := os.ReadFile(filepath.Join(files, "etc/motd"))
		return string(b)
	}

	res1, rz1, log1, err := build("first image\n")
	if errors.Is(err, rootfs.ErrSandbox) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := count(log1, "assemble arm64 root"); n != 1 || res1.Rootfs == nil || res1.Rootfs.How != store.Built {
		t.Fatalf("first build: %d assemblies, root %+v; want one, built\n%s", n, res1.Rootfs, strings.Join(log1, "\n"))
	}
	res2, rz2, log2, err := build("second image\n")
	if err != nil {
		t.Fatal(err)
	}
	if res2.Derivation == res1.Derivation || rz2.How != store.Built {
		t.Fatalf("the second image (another overlay) is not a build of its own: %s %s", res2.Derivation, rz2.How)
	}
	if n := count(log2, "assemble arm64 root"); n != 0 || res2.Rootfs == nil || res2.Rootfs.How != store.Hit ||
		count(log2, "found in the store") != 1 {
		t.Fatalf("second build: %d assemblies, root %+v; want none, a store hit\n%s", n, res2.Rootfs, strings.Join(log2, "\n"))
	}
	if res1.Rootfs.Derivation != res2.Rootfs.Derivation || res1.Rootfs.Entry != res2.Rootfs.Entry {
		t.Errorf("two roots: %+v %+v", res1.Rootfs, res2.Rootfs)
	}
	if got := motd(rz1, res1); got != "first image\n" {
		t.Errorf("first image's motd: %q", got)
	}
	if got := motd(rz2, res2); got != "second image\n" {
		t.Errorf("second image's motd: %q", got)
	}
	r, err := recipes.Load(smallRootRecipe(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := r.KindData.(*recipes.ImageSpec).Rootfs.Lock(r.Dir); rootfs.RootDerivation(l, 1751414400) != res2.Rootfs.Derivation {
		t.Errorf("manifest names root %s, not the lock's", res2.Rootfs.Derivation)
	}

	// The stored root's archive changed: a third image is refused, not
	// built on it and not assembled anew.
	archive := filepath.Join(res1.Rootfs.Entry, rootfs.ArchiveFile)
	os.Chmod(archive, 0o644)
	f, err := os.OpenFile(archive, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("kiln"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Chmod(archive, 0o444)
	_, rz3, log3, err := build("third image\n")
	if !errors.Is(err, store.ErrTampered) || rz3 != nil {
		t.Fatalf("third build on a changed root: %v, want ErrTampered", err)
	}
	if n := count(log3, "assemble arm64 root"); n != 0 {
		t.Errorf("a changed root was assembled over")
	}
}

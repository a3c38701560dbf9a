package rootfs_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/image/rootfs/rootfstest"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/debian/debtest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
)

// The tests assemble testdata/small.lock: the closure of dpkg, dash,
// coreutils, base-files, base-passwd, diffutils, libc-bin, sed, grep and
// findutils for bookworm arm64 (25 packages, 10 MB): the smallest set whose
// maintainer scripts dpkg can run. Its .debs are fetched once into a store
// kept outside the checkout ($HOME/.cache/kiln-test/rootfs-store), and
// mmdebstrap's root for the same set in $HOME/.cache/kiln-test/mmdebstrap
// (rootfstest.MmdebstrapRoot, keyed by everything that shapes it).

const epoch = 1751414400

// needSandbox skips where the build sandbox cannot exist: not root (the
// identity-mapped user namespace needs it), no qemu-user-static.
func needSandbox(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("assembling a root filesystem needs root (identity-mapped user namespace)")
	}
	for _, p := range []string{"qemu-aarch64-static", "dpkg-deb", "mksquashfs"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (make deps installs it)", p)
		}
	}
}

func smallLock(t testing.TB) (*debian.Lock, []rootfs.Deb) {
	t.Helper()
	data, err := os.ReadFile("testdata/small.lock")
	if err != nil {
		t.Fatal(err)
	}
	l, err := debian.ParseLock(data)
	if err != nil {
		t.Fatal(err)
	}
	// Once Debian's archive moved past the fixture (and the snapshot
	// archive cannot be reached), the same request resolved again stands
	// in for it, kept beside the store: the test runs on, with the
	// archive's current versions, instead of skipping.
	st := rootfstest.CacheDir(t, "rootfs-store")
	ctx := context.Background()
	debs, err := rootfstest.Debs(ctx, st, l)
	if errors.Is(err, fetch.ErrNoSource) {
		t.Logf("%v: the archive moved past testdata/small.lock", err)
		relocked := filepath.Join(rootfstest.CacheDir(t, "rootfs-lock"), "small.lock")
		if data, rerr := os.ReadFile(relocked); rerr == nil {
			if rl, rerr := debian.ParseLock(data); rerr == nil && rl.RequestHash == l.RequestHash {
				l = rl
				debs, err = rootfstest.Debs(ctx, st, l)
			}
		}
		if errors.Is(err, fetch.ErrNoSource) {
			res := &debian.Resolver{Dir: rootfstest.CacheDir(t, "rootfs-apt")}
			if l, err = res.Resolve(ctx, l.Request); err != nil {
				t.Fatalf("resolve testdata/small.lock's request again (network to Debian): %v", err)
			}
			if err := os.WriteFile(relocked, l.Marshal(), 0o644); err != nil {
				t.Fatal(err)
			}
			debs, err = rootfstest.Debs(ctx, st, l)
		}
		t.Logf("using %s (%d packages, resolved %s): copy it to testdata/small.lock", relocked, len(l.Packages), l.Resolved.Format("2006-01-02"))
	}
	if err != nil {
		t.Fatalf("fetch the locked packages (network to Debian, once): %v", err)
	}
	return l, debs
}

func assemble(t testing.TB, debs []rootfs.Deb) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := rootfs.Assemble(context.Background(), dir, rootfs.Options{Arch: "arm64", Debs: debs, Epoch: epoch, Log: t.Logf}); err != nil {
		if errors.Is(err, rootfs.ErrSandbox) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return dir
}

// first is one assembly shared by the tests (each takes a minute or more
// of emulated dpkg).
var first struct {
	sync.Once
	dir string
}

func firstAssembly(t *testing.T, debs []rootfs.Deb) string {
	first.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-rootfs-test-")
		if err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(dir, "root")
		os.Mkdir(root, 0o755)
		if err := rootfs.Assemble(context.Background(), root, rootfs.Options{Arch: "arm64", Debs: debs, Epoch: epoch}); err != nil {
			os.RemoveAll(dir)
			if errors.Is(err, rootfs.ErrSandbox) {
				t.Skip(err)
			}
			t.Fatal(err)
		}
		first.dir = root
	})
	if first.dir == "" {
		t.Skip("the first assembly failed")
	}
	return first.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if first.dir != "" {
		os.RemoveAll(filepath.Dir(first.dir))
	}
	os.Exit(code)
}

// TestAssembleReproducible: two assemblies of the same lock are the same
// tree (owners, modes, times, contents) and the same squashfs bytes.
func TestAssembleReproducible(t *testing.T) {
	needSandbox(t)
	_, debs := smallLock(t)
	a, b := firstAssembly(t, debs), assemble(t, debs)
	ta, tb := rootfstest.Walk(t, a), rootfstest.Walk(t, b)
	for p, ea := range ta {
		if eb, ok := tb[p]; !ok || ea != eb {
			t.Errorf("%s: first %v (mtime %d), second %v (mtime %d)", p, ea, ea.Mtime, eb, eb.Mtime)
		}
	}
	for p := range tb {
		if _, ok := ta[p]; !ok {
			t.Errorf("%s: only in the second build", p)
		}
	}
	if e := ta["etc/machine-id"]; e.Kind != "" && e.Size != 0 {
		t.Errorf("etc/machine-id is not empty")
	}
	var sums []string
	for _, dir := range []string{a, b} {
		out := filepath.Join(t.TempDir(), "root.squashfs")
		if err := rootfs.Squashfs(context.Background(), dir, out, epoch, ""); err != nil {
			t.Fatal(err)
		}
		s, _ := store.HashFile(out)
		sums = append(sums, s)
	}
	if sums[0] != sums[1] {
		t.Errorf("squashfs differs: %s %s", sums[0], sums[1])
	}
}

// TestAssembleMatchesMmdebstrap: the same locked set assembled by kiln and
// by mmdebstrap (custom variant, every locked package) gives the same file
// list, owners, modes, contents and /var/lib/dpkg/status, apart from
// rootfstest.MmdebstrapDifferences, each of which must explain something.
func TestAssembleMatchesMmdebstrap(t *testing.T) {
	needSandbox(t)
	l, debs := smallLock(t)
	mm := rootfstest.MmdebstrapRoot(t, l, debs, epoch)
	k := firstAssembly(t, debs)
	known := rootfstest.MmdebstrapDifferences
	rootfstest.Compare(rootfstest.Walk(t, k), rootfstest.Walk(t, mm), known).Check(t, known)
	rootfstest.CheckDpkgStatus(t, k, mm, l)
}

// TestAssembleScriptFails: a package whose preinst fails stops the
// assembly with ErrScript naming the package, the script and its output.
func TestAssembleScriptFails(t *testing.T) {
	needSandbox(t)
	_, debs := smallLock(t)
	bad := debtest.Build(t, t.TempDir(), debtest.Deb{Name: "kiln-fails", Version: "1.0-1",
		Scripts: map[string]string{"preinst": "#!/bin/sh\necho 'kiln-fails: the device tree overlay is missing' >&2\nexit 3\n"}})
	// First in line: dpkg runs its preinst before unpacking anything else.
	debs = append([]rootfs.Deb{{Name: "kiln-fails", Path: bad, Base: true}}, debs...)
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	err := rootfs.Assemble(context.Background(), dir, rootfs.Options{Arch: "arm64", Debs: debs, Epoch: epoch})
	if !errors.Is(err, rootfs.ErrScript) || !strings.Contains(err.Error(), "kiln-fails") ||
		!strings.Contains(err.Error(), "pre-installation script") || !strings.Contains(err.Error(), "the device tree overlay is missing") {
		t.Fatalf("%v", err)
	}
}

package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/debian/debtest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// The tests assemble testdata/small.lock: the closure of dpkg, dash,
// coreutils, base-files, base-passwd, diffutils, libc-bin, sed, grep and
// findutils for bookworm arm64 (25 packages, 10 MB): the smallest set whose
// maintainer scripts dpkg can run. Its .debs are fetched once into a store
// kept outside the checkout ($HOME/.cache/kiln-test/rootfs-store), and
// mmdebstrap's root for the same set is cached there by the lock's hash.

const epoch = 1751414400

func cacheDir(t testing.TB, name string) string {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory for the test cache")
	}
	d := filepath.Join(home, ".cache", "kiln-test", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

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

func smallLock(t testing.TB) (*debian.Lock, []Deb) {
	t.Helper()
	data, err := os.ReadFile("testdata/small.lock")
	if err != nil {
		t.Fatal(err)
	}
	l, err := debian.ParseLock(data)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cacheDir(t, "rootfs-store"))
	if err != nil {
		t.Fatal(err)
	}
	// Once Debian's archive moved past the fixture (and the snapshot
	// archive cannot be reached), the same request resolved again stands
	// in for it, kept beside the store: the test runs on, with the
	// archive's current versions, instead of skipping.
	f := &fetch.Fetcher{Store: st}
	debs, err := fetchLock(f, l)
	if errors.Is(err, fetch.ErrNoSource) {
		t.Logf("%v: the archive moved past testdata/small.lock", err)
		relocked := filepath.Join(cacheDir(t, "rootfs-lock"), "small.lock")
		if data, rerr := os.ReadFile(relocked); rerr == nil {
			if rl, rerr := debian.ParseLock(data); rerr == nil && rl.RequestHash == l.RequestHash {
				l = rl
				debs, err = fetchLock(f, l)
			}
		}
		if errors.Is(err, fetch.ErrNoSource) {
			res := &debian.Resolver{Dir: cacheDir(t, "rootfs-apt")}
			if l, err = res.Resolve(context.Background(), l.Request); err != nil {
				t.Fatalf("resolve testdata/small.lock's request again (network to Debian): %v", err)
			}
			if err := os.WriteFile(relocked, l.Marshal(), 0o644); err != nil {
				t.Fatal(err)
			}
			debs, err = fetchLock(f, l)
		}
		t.Logf("using %s (%d packages, resolved %s): copy it to testdata/small.lock", relocked, len(l.Packages), l.Resolved.Format("2006-01-02"))
	}
	if err != nil {
		t.Fatalf("fetch the locked packages (network to Debian, once): %v", err)
	}
	return l, debs
}

// fetchLock brings a lock's .debs into f's store.
func fetchLock(f *fetch.Fetcher, l *debian.Lock) ([]Deb, error) {
	ins, err := recipes.LockInputs(l, debian.SnapshotBase)
	if err != nil {
		return nil, err
	}
	if err := f.PrefetchDebs(context.Background(), ins); err != nil {
		return nil, err
	}
	var debs []Deb
	for i, in := range ins {
		p, err := f.DebFile(context.Background(), in)
		if err != nil {
			return nil, err
		}
		debs = append(debs, Deb{Name: l.Packages[i].Name, Path: p, Base: l.Packages[i].Base})
	}
	return debs, nil
}

func assemble(t testing.TB, debs []Deb) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Assemble(context.Background(), dir, Options{Arch: "arm64", Debs: debs, Epoch: epoch, Log: t.Logf}); err != nil {
		if errors.Is(err, ErrSandbox) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return dir
}

// entry is what the comparison sees of one path.
type entry struct {
	kind     string // file, dir, link, char, block, fifo, socket
	mode     fs.FileMode
	uid, gid uint32
	content  string // sha256 of a file, target of a link, rdev of a device
	mtime    int64
}

func (e entry) String() string {
	return fmt.Sprintf("%s %v %d:%d %s", e.kind, e.mode, e.uid, e.gid, e.content)
}

func walkTree(t *testing.T, root string) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{mode: fi.Mode(), uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec}
		switch {
		case fi.Mode().IsRegular():
			e.kind = "file"
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			e.content = hex.EncodeToString(h.Sum(nil))
		case fi.IsDir():
			e.kind = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.kind = "link"
			e.content, _ = os.Readlink(p)
		default:
			e.kind = fi.Mode().Type().String()
			e.content = fmt.Sprint(st.Rdev)
		}
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// first is one assembly shared by the tests (each takes a minute or more
// of emulated dpkg).
var first struct {
	sync.Once
	dir string
}

func firstAssembly(t *testing.T, debs []Deb) string {
	first.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-rootfs-test-")
		if err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(dir, "root")
		os.Mkdir(root, 0o755)
		if err := Assemble(context.Background(), root, Options{Arch: "arm64", Debs: debs, Epoch: epoch}); err != nil {
			os.RemoveAll(dir)
			if errors.Is(err, ErrSandbox) {
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
	ta, tb := walkTree(t, a), walkTree(t, b)
	for p, ea := range ta {
		if eb, ok := tb[p]; !ok || ea != eb {
			t.Errorf("%s: first %v (mtime %d), second %v (mtime %d)", p, ea, ea.mtime, eb, eb.mtime)
		}
	}
	for p := range tb {
		if _, ok := ta[p]; !ok {
			t.Errorf("%s: only in the second build", p)
		}
	}
	if e := ta["etc/machine-id"]; e.kind != "" && e.content != hex.EncodeToString(sha256.New().Sum(nil)) {
		t.Errorf("etc/machine-id is not empty")
	}
	var sums []string
	for _, dir := range []string{a, b} {
		out := filepath.Join(t.TempDir(), "root.squashfs")
		if err := Squashfs(context.Background(), dir, out, epoch); err != nil {
			t.Fatal(err)
		}
		s, _ := store.HashFile(out)
		sums = append(sums, s)
	}
	if sums[0] != sums[1] {
		t.Errorf("squashfs differs: %s %s", sums[0], sums[1])
	}
}

// mmdebstrapScript runs mmdebstrap (root mode, custom variant: the given
// packages, installed with dpkg as kiln does) in the same sandbox, from a
// local repository holding exactly the locked .debs.
const mmdebstrapScript = `set -eu
R=$1 REPO=$2 INC=$3 BINFMT=$4
` + binfmtScript + `
mmdebstrap --quiet --mode=root --variant=custom --include="$INC" --architectures=arm64 --skip=check/qemu \
	--format=directory bookworm "$R" "deb [trusted=yes] copy://$REPO bookworm main"
`

// mmdebstrapRoot builds (once, cached by the lock's hash) mmdebstrap's root
// for the locked set.
func mmdebstrapRoot(t *testing.T, l *debian.Lock, debs []Deb) string {
	t.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap not installed (make deps installs it)")
	}
	ver, _ := exec.Command("mmdebstrap", "--version").Output()
	key := sha256.Sum256(append(l.Marshal(), ver...))
	dir := filepath.Join(cacheDir(t, "mmdebstrap"), hex.EncodeToString(key[:8]))
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return filepath.Join(dir, "root")
	}
	os.RemoveAll(dir)
	root := filepath.Join(dir, "root")
	runMmdebstrap(t, root, localRepo(t, filepath.Join(dir, "repo"), debs), debs)
	os.WriteFile(filepath.Join(dir, "done"), nil, 0o644)
	return root
}

// knownDifferences are the paths where kiln's root differs from
// mmdebstrap's on purpose (see README "Debian root filesystems").
var knownDifferences = map[string]string{
	"etc/hostname":         "mmdebstrap copies the host's; kiln leaves it to the image",
	"etc/resolv.conf":      "mmdebstrap copies the host's; kiln leaves it to the image",
	"etc/apt/sources.list": "mmdebstrap writes its mirror line; kiln's build is offline and names no mirror",
	"etc/fstab":            "mmdebstrap writes '# UNCONFIGURED FSTAB'; the image recipe's overlay owns fstab",
	"run/lock":             "mmdebstrap leaves it; /run is a tmpfs on the device and kiln empties it",
}

// aptSkeleton is what mmdebstrap creates for apt itself (sources, lists,
// cache, log directories) even when apt is not in the set; kiln's root has
// what the apt package installs, if it is locked.
var aptSkeleton = []string{"etc/apt", "var/cache/apt", "var/lib/apt", "var/log/apt"}

func known(p string) bool {
	if _, ok := knownDifferences[p]; ok {
		return true
	}
	for _, a := range aptSkeleton {
		if p == a || strings.HasPrefix(p, a+"/") {
			return true
		}
	}
	// mmdebstrap creates device nodes in /dev (--skip=output/mknod not
	// given); kiln leaves /dev empty for devtmpfs.
	return strings.HasPrefix(p, "dev/")
}

// TestAssembleMatchesMmdebstrap: the same locked set assembled by kiln and
// by mmdebstrap gives the same file list, owners, modes, contents and
// /var/lib/dpkg/status, apart from knownDifferences. Times are not
// compared: mmdebstrap's directory output keeps the build's times (its
// tar output clamps them as kiln does).
func TestAssembleMatchesMmdebstrap(t *testing.T) {
	needSandbox(t)
	l, debs := smallLock(t)
	mm := mmdebstrapRoot(t, l, debs)
	k := firstAssembly(t, debs)
	tk, tm := walkTree(t, k), walkTree(t, mm)
	var diffs []string
	for p, ek := range tk {
		em, ok := tm[p]
		ek.mtime, em.mtime = 0, 0
		switch {
		case known(p):
		case !ok:
			diffs = append(diffs, "only kiln: "+p+" "+ek.String())
		case ek != em:
			diffs = append(diffs, fmt.Sprintf("%s: kiln %v, mmdebstrap %v", p, ek, em))
		}
	}
	for p, em := range tm {
		if _, ok := tk[p]; !ok && !known(p) {
			diffs = append(diffs, "only mmdebstrap: "+p+" "+em.String())
		}
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Error(d)
	}
	ks, _ := os.ReadFile(filepath.Join(k, "var/lib/dpkg/status"))
	ms, _ := os.ReadFile(filepath.Join(mm, "var/lib/dpkg/status"))
	if len(ks) == 0 || !bytes.Equal(ks, ms) {
		t.Errorf("/var/lib/dpkg/status differs (%d and %d bytes)", len(ks), len(ms))
	}
	if n := bytes.Count(ks, []byte("\nStatus: install ok installed")); n != len(l.Packages) {
		t.Errorf("dpkg status has %d installed packages, the lock %d", n, len(l.Packages))
	}
}

// TestAssembleScriptFails: a package whose preinst fails stops the
// assembly with ErrScript naming the package, the script and its output.
func TestAssembleScriptFails(t *testing.T) {
	needSandbox(t)
	_, debs := smallLock(t)
	bad := debtest.Build(t, t.TempDir(), debtest.Deb{Name: "kiln-fails", Version: "1.0-1",
		Scripts: map[string]string{"preinst": "#!/bin/sh\necho 'kiln-fails: the device tree overlay is missing' >&2\nexit 3\n"}})
	// First in line: dpkg runs its preinst before unpacking anything else.
	debs = append([]Deb{{Name: "kiln-fails", Path: bad, Base: true}}, debs...)
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	err := Assemble(context.Background(), dir, Options{Arch: "arm64", Debs: debs, Epoch: epoch})
	if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "kiln-fails") ||
		!strings.Contains(err.Error(), "pre-installation script") || !strings.Contains(err.Error(), "the device tree overlay is missing") {
		t.Fatalf("%v", err)
	}
}

// localRepo makes a repository at repo holding exactly debs.
func localRepo(tb testing.TB, repo string, debs []Deb) string {
	tb.Helper()
	idx := filepath.Join(repo, "dists", "bookworm", "main", "binary-arm64")
	if err := os.MkdirAll(idx, 0o755); err != nil {
		tb.Fatal(err)
	}
	os.MkdirAll(filepath.Join(repo, "pool"), 0o755)
	for _, d := range debs {
		if err := linkOrCopy(d.Path, filepath.Join(repo, "pool", filepath.Base(d.Path))); err != nil {
			tb.Fatal(err)
		}
	}
	scan := exec.Command("dpkg-scanpackages", "-m", "pool")
	scan.Dir = repo
	pk, err := scan.Output()
	if err != nil {
		tb.Fatalf("dpkg-scanpackages: %v", err)
	}
	os.WriteFile(filepath.Join(idx, "Packages"), pk, 0o644)
	sum := sha256.Sum256(pk)
	rel := fmt.Sprintf("Suite: bookworm\nCodename: bookworm\nArchitectures: arm64\nComponents: main\nDate: Sun, 01 Dec 2026 00:00:00 UTC\nSHA256:\n %x %d main/binary-arm64/Packages\n", sum, len(pk))
	os.WriteFile(filepath.Join(repo, "dists", "bookworm", "Release"), []byte(rel), 0o644)
	return repo
}

// runMmdebstrap builds mmdebstrap's root for debs from repo into root.
func runMmdebstrap(tb testing.TB, root, repo string, debs []Deb) {
	tb.Helper()
	var names []string
	for _, d := range debs {
		names = append(names, d.Name)
	}
	binfmt, err := binfmtFor("arm64")
	if err != nil {
		tb.Skip(err)
	}
	cmd := sandboxCmd(context.Background(), epoch, mmdebstrapScript, root, repo, strings.Join(names, ","), binfmt)
	if out, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("kiln-sandbox:")) {
			tb.Skipf("%s", out)
		}
		tb.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
}

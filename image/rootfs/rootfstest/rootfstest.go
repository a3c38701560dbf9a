// Package rootfstest holds what kiln's tests need to hold an assembled
// Debian root against mmdebstrap's for the same locked packages: the
// locked .debs from a store, mmdebstrap's root (built once in kiln's own
// build sandbox from a local repository holding exactly those .debs, and
// cached), a walk of a tree into what the comparison sees of each path,
// and the comparison itself against a list of documented differences, each
// of which must explain at least one path. Only tests import it.
package rootfstest

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
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// CacheDir is $HOME/.cache/kiln-test/name, made if missing: heavy
// fixtures live there, outside the checkout, keyed by their inputs.
func CacheDir(tb testing.TB, name string) string {
	tb.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		tb.Skip("no home directory for the test cache")
	}
	d := filepath.Join(home, ".cache", "kiln-test", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		tb.Fatal(err)
	}
	return d
}

// Debs brings l's .debs into the store at dir (from the network only for
// those it lacks) and returns them in the lock's order. The error wraps
// fetch.ErrNoSource when a pinned version is gone from every source.
func Debs(ctx context.Context, dir string, l *debian.Lock) ([]rootfs.Deb, error) {
	st, err := store.Open(dir)
	if err != nil {
		return nil, err
	}
	f := &fetch.Fetcher{Store: st}
	ins, err := recipes.LockInputs(l, debian.SnapshotBase)
	if err != nil {
		return nil, err
	}
	if err := f.PrefetchDebs(ctx, ins); err != nil {
		return nil, err
	}
	debs := make([]rootfs.Deb, len(ins))
	for i, in := range ins {
		p, err := f.DebFile(ctx, in)
		if err != nil {
			return nil, err
		}
		debs[i] = rootfs.Deb{Name: l.Packages[i].Name, Path: p, Base: l.Packages[i].Base}
	}
	return debs, nil
}

// mmdebstrapScript runs mmdebstrap in root mode, directory output, from a
// local repository holding exactly the locked .debs (one suite, trusted:
// it is made on the spot), installing with dpkg under qemu-user as kiln
// does.
const mmdebstrapScript = `set -eu
R=$1 REPO=$2 VARIANT=$3 INC=$4 ARCH=$5
mmdebstrap --quiet --mode=root --variant="$VARIANT" --include="$INC" --architectures="$ARCH" --skip=check/qemu \
	--format=directory bookworm "$R" "deb [trusted=yes] copy://$REPO bookworm main"
`

// Variant is the mmdebstrap variant and --include list that install the
// set l locks, as kiln does. With Essential, kiln lock's base set is what
// apt-get install ?essential gives with apt not counted essential
// (pkgCacheGen::ForceEssential ","), as mmdebstrap's essential variant
// installs first; then the request's top-level packages (mmdebstrap's apt
// resolves them from a repository holding only the locked .debs, so it
// installs the same set, ordering them itself). Without Essential: the
// custom variant and every locked package.
func Variant(l *debian.Lock) (variant string, include []string) {
	if l.Request.Essential {
		return "essential", l.Request.Packages
	}
	for _, p := range l.Packages {
		include = append(include, p.Name)
	}
	return "custom", include
}

// MmdebstrapRoot returns mmdebstrap's root for l (Variant's choice), built
// from debs with SOURCE_DATE_EPOCH=epoch in kiln's sandbox. It is built
// once and kept in $HOME/.cache/kiln-test/mmdebstrap/<key>/root, the key
// covering the lock's text, mmdebstrap's version, the epoch, the script
// that runs it and the variant and packages it asks for; a warm call only checks the cache is there. It
// skips when mmdebstrap is not installed (make deps installs it) or the
// sandbox cannot be made.
func MmdebstrapRoot(tb testing.TB, l *debian.Lock, debs []rootfs.Deb, epoch int64) string {
	tb.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		tb.Skip("mmdebstrap not installed (make deps installs it)")
	}
	ver, err := exec.Command("mmdebstrap", "--version").Output()
	if err != nil {
		tb.Fatalf("mmdebstrap --version: %v", err)
	}
	variant, include := Variant(l)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%s\x00%s\x00%s", l.Marshal(), ver, epoch, mmdebstrapScript, variant, strings.Join(include, ","))
	dir := filepath.Join(CacheDir(tb, "mmdebstrap"), hex.EncodeToString(h.Sum(nil)[:8]))
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return root
	}
	if err := os.RemoveAll(dir); err != nil {
		tb.Fatal(err)
	}
	repo := LocalRepo(tb, filepath.Join(dir, "repo"), debs)
	RunMmdebstrap(tb, root, repo, l, epoch)
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	return root
}

// LocalRepo makes a repository at repo (suite bookworm, component main)
// holding exactly debs, and returns repo.
func LocalRepo(tb testing.TB, repo string, debs []rootfs.Deb) string {
	tb.Helper()
	if len(debs) == 0 {
		tb.Fatal("rootfstest: a repository of no packages")
	}
	arch, err := exec.Command("dpkg-deb", "-f", debs[0].Path, "Architecture").Output()
	if err != nil {
		tb.Fatalf("dpkg-deb -f %s: %v", debs[0].Path, err)
	}
	idx := filepath.Join(repo, "dists", "bookworm", "main", "binary-"+strings.TrimSpace(string(arch)))
	if err := os.MkdirAll(idx, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "pool"), 0o755); err != nil {
		tb.Fatal(err)
	}
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
	if err := os.WriteFile(filepath.Join(idx, "Packages"), pk, 0o644); err != nil {
		tb.Fatal(err)
	}
	sum := sha256.Sum256(pk)
	rel := fmt.Sprintf("Suite: bookworm\nCodename: bookworm\nArchitectures: %s\nComponents: main\nDate: Sun, 01 Dec 2026 00:00:00 UTC\nSHA256:\n %x %d main/%s/Packages\n",
		filepath.Base(idx)[len("binary-"):], sum, len(pk), filepath.Base(idx))
	if err := os.WriteFile(filepath.Join(repo, "dists", "bookworm", "Release"), []byte(rel), 0o644); err != nil {
		tb.Fatal(err)
	}
	return repo
}

// RunMmdebstrap builds mmdebstrap's root for l (Variant's choice) from
// repo into root, in kiln's build sandbox.
func RunMmdebstrap(tb testing.TB, root, repo string, l *debian.Lock, epoch int64) {
	tb.Helper()
	variant, include := Variant(l)
	cmd, err := rootfs.SandboxCommand(context.Background(), l.Request.Arch, epoch, mmdebstrapScript,
		root, repo, variant, strings.Join(include, ","), l.Request.Arch)
	if err != nil {
		if errors.Is(err, rootfs.ErrSandbox) {
			tb.Skip(err)
		}
		tb.Fatal(err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("kiln-sandbox:")) {
			tb.Skipf("%s", out)
		}
		tb.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// Entry is what the comparison sees of one path.
type Entry struct {
	Kind     string // file, dir, link, or fs.FileMode's name of the type (D for a block device, Dc for a character device, p, S)
	Mode     fs.FileMode
	UID, GID uint32
	Size     int64  // a file's size
	SHA256   string // a file's content
	Target   string // a link's target, a device's number
	Xattrs   string // extended attributes but the build host's labels: name=hex, sorted
	Nlink    uint64 // hard links to a non-directory
	Mtime    int64  // not compared by Compare
}

func (e Entry) String() string {
	s := fmt.Sprintf("%s %v %d:%d", e.Kind, e.Mode, e.UID, e.GID)
	switch {
	case e.Kind == "file":
		s += fmt.Sprintf(" %d bytes sha256:%.12s", e.Size, e.SHA256)
	case e.Target != "":
		s += " -> " + e.Target
	}
	if e.Nlink > 1 {
		s += fmt.Sprintf(" %d links", e.Nlink)
	}
	if e.Xattrs != "" {
		s += " xattrs " + e.Xattrs
	}
	return s
}

// hostLabels are extended attributes the build host's security module
// sets on its own (rootfs.Squashfs drops them too).
var hostLabels = map[string]bool{"security.selinux": true, "security.apparmor": true, "security.SMACK64": true}

// Tree is a walked tree: path relative to the root ("etc/passwd"; "." is
// the root itself) to its entry.
type Tree map[string]Entry

// Walk reads the tree at root.
func Walk(tb testing.TB, root string) Tree {
	tb.Helper()
	m := Tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := Entry{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Sec}
		if !fi.IsDir() {
			e.Nlink = uint64(st.Nlink)
		}
		switch {
		case fi.Mode().IsRegular():
			e.Kind, e.Size = "file", fi.Size()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			e.SHA256 = hex.EncodeToString(h.Sum(nil))
		case fi.IsDir():
			e.Kind = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Kind = "link"
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			e.Kind = fi.Mode().Type().String()
			e.Target = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if e.Xattrs, err = xattrs(p); err != nil {
			return err
		}
		m[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func xattrs(p string) (string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err == unix.ENOTSUP {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s: list xattrs: %w", p, err)
	}
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || hostLabels[name] {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return "", fmt.Errorf("%s: xattr %s: %w", p, name, err)
		}
		out = append(out, name+"="+hex.EncodeToString(v[:vn]))
	}
	sort.Strings(out)
	return strings.Join(out, ","), nil
}

// A Difference is a documented reason for kiln's root and mmdebstrap's to
// differ at some paths.
type Difference struct {
	// Path is a path ("etc/hostname"), a path.Match pattern
	// ("etc/ssh/ssh_host_*_key"), or a directory followed by "/..." for
	// it and everything beneath it ("var/lib/apt/..."); several are
	// separated by "|".
	Path string
	Why  string
}

// Match says whether p is one of d's paths.
func (d Difference) Match(p string) bool {
	for _, pat := range strings.Split(d.Path, "|") {
		if dir, ok := strings.CutSuffix(pat, "/..."); ok {
			if p == dir || strings.HasPrefix(p, dir+"/") {
				return true
			}
		} else if ok, err := path.Match(pat, p); err == nil && ok {
			return true
		}
	}
	return false
}

// MmdebstrapDifferences are the paths where kiln's assembly differs from
// mmdebstrap's on purpose, whatever the package set (README "Debian root
// filesystems" lists them with these reasons).
var MmdebstrapDifferences = []Difference{
	{"etc/hostname", "mmdebstrap copies the host's; kiln leaves it to the image"},
	{"etc/resolv.conf", "mmdebstrap copies the host's; kiln leaves it to the image"},
	{"etc/apt/sources.list", "mmdebstrap writes its mirror line; kiln's build is offline and names no mirror"},
	{"etc/fstab", "mmdebstrap writes '# UNCONFIGURED FSTAB'; the image recipe's overlay owns fstab"},
	{"run/lock/...", "mmdebstrap leaves it; /run is a tmpfs on the device and kiln empties it"},
	{"etc/apt/...|var/cache/apt/...|var/lib/apt/...|var/log/apt/...", "mmdebstrap's apt skeleton (made even without apt) and what its apt run leaves: sources.list, lock files, extended_states, partial directories made 0700; kiln installs with dpkg alone and has what the locked apt package installs"},
}

// Report is what Compare found.
type Report struct {
	// Unexplained are the differences no Difference explains, one line
	// each, sorted.
	Unexplained []string
	// Explained lists, for each Difference (by its index), the
	// differences it explains.
	Explained [][]string
	// Stale are the Differences that explain nothing: the list must
	// shrink, or the comparison has stopped seeing what it should.
	Stale []Difference
}

// Compare holds kiln's tree against mmdebstrap's: a path only in one, or
// whose entries differ in anything but the modification time, must be
// explained by an entry of known (every entry matching it counts).
// Modification times are not compared: mmdebstrap's directory output
// keeps the build's times, where kiln clamps them as its tar output does.
func Compare(kiln, mm Tree, known []Difference) Report {
	r := Report{Explained: make([][]string, len(known))}
	diff := func(p, what string) {
		hit := false
		for i, d := range known {
			if d.Match(p) {
				r.Explained[i] = append(r.Explained[i], what)
				hit = true
			}
		}
		if !hit {
			r.Unexplained = append(r.Unexplained, what)
		}
	}
	for p, ek := range kiln {
		em, ok := mm[p]
		ek.Mtime, em.Mtime = 0, 0
		switch {
		case !ok:
			diff(p, "only kiln: "+p+" "+ek.String())
		case ek != em:
			diff(p, fmt.Sprintf("%s: kiln %v, mmdebstrap %v", p, ek, em))
		}
	}
	for p, em := range mm {
		if _, ok := kiln[p]; !ok {
			diff(p, "only mmdebstrap: "+p+" "+em.String())
		}
	}
	sort.Strings(r.Unexplained)
	for i, d := range known {
		sort.Strings(r.Explained[i])
		if len(r.Explained[i]) == 0 {
			r.Stale = append(r.Stale, d)
		}
	}
	return r
}

// Check fails tb for every unexplained difference and every stale
// Difference, and logs how many paths each Difference explains.
func (r Report) Check(tb testing.TB, known []Difference) {
	tb.Helper()
	for i, d := range known {
		if n := len(r.Explained[i]); n > 0 {
			tb.Logf("%s (%d paths): %s\n\t%s", d.Path, n, d.Why, strings.Join(r.Explained[i], "\n\t"))
		}
	}
	for _, u := range r.Unexplained {
		tb.Error(u)
	}
	for _, d := range r.Stale {
		tb.Errorf("documented difference %s (%s) explains nothing: remove it or find why the comparison no longer sees it", d.Path, d.Why)
	}
}

// CheckDpkgStatus fails tb unless kiln's and mmdebstrap's
// /var/lib/dpkg/status are the same bytes, listing every package of l as
// installed.
func CheckDpkgStatus(tb testing.TB, kilnRoot, mmRoot string, l *debian.Lock) {
	tb.Helper()
	ks, err := os.ReadFile(filepath.Join(kilnRoot, "var/lib/dpkg/status"))
	if err != nil {
		tb.Fatal(err)
	}
	ms, err := os.ReadFile(filepath.Join(mmRoot, "var/lib/dpkg/status"))
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(ks, ms) {
		kl, ml := strings.Split(string(ks), "\n"), strings.Split(string(ms), "\n")
		i := 0
		for i < len(kl) && i < len(ml) && kl[i] == ml[i] {
			i++
		}
		tb.Errorf("/var/lib/dpkg/status differs (%d and %d bytes); first at line %d: kiln %q, mmdebstrap %q",
			len(ks), len(ms), i+1, at(kl, i), at(ml, i))
	}
	if n := bytes.Count(ks, []byte("\nStatus: install ok installed")); n != len(l.Packages) {
		tb.Errorf("dpkg status has %d installed packages, the lock %d", n, len(l.Packages))
	}
}

func at(l []string, i int) string {
	if i < len(l) {
		return l[i]
	}
	return "(end)"
}

// CleanupDifferences are what kiln's assembly removes or empties beyond
// mmdebstrap's cleanup, because the device makes it on its first boot
// (README "Debian root filesystems" lists them with these reasons). A set
// without systemd and openssh-server has none of them.
var CleanupDifferences = []Difference{
	{"etc/machine-id", "both are empty (systemd makes the machine ID on boot); kiln empties the file in place, keeping the mode 0444 systemd gave it, mmdebstrap unlinks it and writes a new 0644 one"},
	{"etc/ssh/ssh_host_*", "no SSH host key is baked into an image: kiln removes those openssh-server's postinst made; the device makes its own on first boot"},
}

// SquashfsDifferences are what a root loses in rootfs.Squashfs, for a set
// with systemd: squashfs holds no POSIX ACLs.
var SquashfsDifferences = []Difference{
	{"var/log/journal", "squashfs holds no POSIX ACLs (mksquashfs drops system.posix_acl_*); systemd-tmpfiles sets this one again on every boot (tmpfiles.d/systemd.conf: a+ /var/log/journal)"},
}

// OrderDifferences are the backups of state before its last change, which
// depends on the order maintainer scripts ran in: kiln configures in the
// lock's order with dpkg alone, batch by batch; mmdebstrap's apt orders
// its own dpkg runs.
var OrderDifferences = []Difference{
	{"etc/group-|etc/gshadow-|etc/passwd-|etc/shadow-", "shadow's backup of the account files before their last change: the last account a maintainer script added differs with the order"},
	{"var/lib/dpkg/status-old|var/cache/debconf/*-old", "dpkg's and debconf's backups before their last run: the runs differ with the order"},
}

// RenumberedGroups explains the differences that come from dynamic system
// groups (GIDs 100-999, which maintainer scripts allocate in the order
// they run) being numbered otherwise by kiln than by mmdebstrap, and
// nothing else: both roots' /etc/group must name the same groups, and a
// path is explained only if its entries differ in the GID alone and both
// GIDs are the same group's; /etc/group, /etc/gshadow and /etc/passwd
// only if they are equal once kiln's GIDs are renumbered as mmdebstrap's
// and lines sorted. It returns nil when no group is numbered otherwise.
func RenumberedGroups(tb testing.TB, kilnRoot, mmRoot string, kiln, mm Tree) []Difference {
	tb.Helper()
	kg, mg := groups(tb, kilnRoot), groups(tb, mmRoot)
	renum := map[string]string{} // kiln GID -> mmdebstrap GID
	var moved []string
	for name, k := range kg {
		m, ok := mg[name]
		if !ok {
			return nil // a group only one has: not a renumbering, Compare shows it
		}
		renum[k] = m
		if k != m {
			moved = append(moved, fmt.Sprintf("%s %s/%s", name, k, m))
		}
	}
	if len(kg) != len(mg) || len(moved) == 0 {
		return nil
	}
	sort.Strings(moved)
	why := "dynamic system groups numbered in the order maintainer scripts ran (kiln/mmdebstrap: " + strings.Join(moved, ", ") + ")"
	var ds []Difference
	for p, ek := range kiln {
		em, ok := mm[p]
		if !ok || ek.GID == em.GID {
			continue
		}
		ek.GID, ek.Mtime, em.Mtime = em.GID, 0, 0
		if ek == em && renum[fmt.Sprint(kiln[p].GID)] == fmt.Sprint(em.GID) {
			ds = append(ds, Difference{Path: p, Why: why})
		}
	}
	// The GID is field 3 of /etc/group and field 4 of /etc/passwd.
	for file, field := range map[string]int{"etc/group": 2, "etc/passwd": 3, "etc/gshadow": -1} {
		k, err := os.ReadFile(filepath.Join(kilnRoot, file))
		if err != nil {
			tb.Fatal(err)
		}
		m, err := os.ReadFile(filepath.Join(mmRoot, file))
		if err != nil {
			tb.Fatal(err)
		}
		if !bytes.Equal(k, m) && sortedLines(renumber(string(k), field, renum)) == sortedLines(string(m)) {
			ds = append(ds, Difference{Path: file, Why: why})
		}
	}
	return ds
}

// groups reads root's /etc/group: name to GID.
func groups(tb testing.TB, root string) map[string]string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(root, "etc/group"))
	if err != nil {
		tb.Fatal(err)
	}
	g := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Split(l, ":")
		if len(f) != 4 {
			tb.Fatalf("%s/etc/group: malformed line %q", root, l)
		}
		g[f[0]] = f[2]
	}
	return g
}

// renumber maps colon-separated field i (none if i < 0) of every line
// through renum.
func renumber(text string, i int, renum map[string]string) string {
	if i < 0 {
		return text
	}
	lines := strings.Split(text, "\n")
	for n, l := range lines {
		f := strings.Split(l, ":")
		if len(f) > i {
			if v, ok := renum[f[i]]; ok {
				f[i] = v
			}
			lines[n] = strings.Join(f, ":")
		}
	}
	return strings.Join(lines, "\n")
}

func sortedLines(text string) string {
	l := strings.Split(text, "\n")
	sort.Strings(l)
	return strings.Join(l, "\n")
}

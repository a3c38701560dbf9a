package debian

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// LockFile is the lock's name beside recipe.toml.
const LockFile = "rootfs.lock"

// LockFormat is the version of the lock file format.
const LockFormat = 1

// ErrLock is returned (wrapped) for a lock file that is malformed or does
// not belong to its recipe's package request.
var ErrLock = errors.New("bad lock file")

// ErrStaleLock is returned (wrapped) when the recipe's package request
// changed since the lock was written: `kiln lock` must run again.
var ErrStaleLock = errors.New("lock does not match the recipe's package request")

// Request is what a recipe asks for: the root filesystem's package list
// and where its packages come from. It is the input of Resolve.
type Request struct {
	// Arch is the Debian architecture of the root (arm64, armhf).
	Arch string `json:"arch"`
	// Suites and Components select the indexes ("bookworm",
	// "bookworm-updates", "bookworm-security"; "main").
	Suites     []string `json:"suites"`
	Components []string `json:"components"`
	// Packages are the top-level packages; apt adds their dependencies.
	Packages []string `json:"packages"`
	// Essential adds the suite's Essential: yes set, as mmdebstrap's
	// essential variant does.
	Essential bool `json:"essential"`
	// Mirror is the repository URI ("file:/srv/debian", "https://…");
	// "" takes each suite's URI from the host's apt sources.
	Mirror string `json:"mirror,omitempty"`
	// Trusted skips signature checks of the mirror's indexes (a local test
	// repository without a signed Release file).
	Trusted bool `json:"trusted,omitempty"`
}

// Hash is the sha256 of the request's canonical JSON: a lock names the
// request it resolved, so a changed package list is noticed.
func (r Request) Hash() string {
	c := r
	c.Packages = append([]string(nil), r.Packages...)
	sort.Strings(c.Packages)
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

var (
	archRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	pkgNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]+$`)
	suiteRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)
)

// Validate checks the request's fields; it uses no network.
func (r Request) Validate() error {
	if !archRE.MatchString(r.Arch) {
		return fmt.Errorf("rootfs: arch %q: want a Debian architecture such as arm64 or armhf", r.Arch)
	}
	if len(r.Suites) == 0 {
		return fmt.Errorf("rootfs: no suites")
	}
	for _, s := range r.Suites {
		if !suiteRE.MatchString(s) || strings.Contains(s, "..") {
			return fmt.Errorf("rootfs: suite %q is not a suite name", s)
		}
	}
	if len(r.Components) == 0 {
		return fmt.Errorf("rootfs: no components (want e.g. [\"main\"])")
	}
	for _, c := range r.Components {
		if !suiteRE.MatchString(c) {
			return fmt.Errorf("rootfs: component %q is not a component name", c)
		}
	}
	if len(r.Packages) == 0 && !r.Essential {
		return fmt.Errorf("rootfs: no packages and essential = false: nothing to install")
	}
	for _, p := range r.Packages {
		if !pkgNameRE.MatchString(p) {
			return fmt.Errorf("rootfs: package %q is not a Debian package name", p)
		}
	}
	if r.Mirror != "" && !strings.HasPrefix(r.Mirror, "file:/") && !strings.HasPrefix(r.Mirror, "https://") && !strings.HasPrefix(r.Mirror, "http://") {
		return fmt.Errorf("rootfs: mirror %q: want file:/PATH or an http(s) URL", r.Mirror)
	}
	return nil
}

// Package is one locked package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	// Source and SourceVersion name the source package it was built from.
	Source        string `json:"source"`
	SourceVersion string `json:"source_version"`
	// Filename is the pool path inside its archive.
	Filename string `json:"filename"`
	// Archive is the archive the package came from ("debian",
	// "debian-security"): with Filename and the lock's time it names the
	// snapshot-archive copy. "" for a repository snapshot does not keep.
	Archive string `json:"archive,omitempty"`
	// Essential is Debian's Essential: yes.
	Essential bool `json:"essential,omitempty"`
	// Base marks the essential set's closure: what mmdebstrap's essential
	// phase unpacks and installs first with dpkg --force-depends.
	Base bool `json:"base,omitempty"`
}

// SnapshotAt is the time of the lock's snapshot-archive fallback URLs.
func (l *Lock) SnapshotAt() time.Time {
	if !l.Snapshot.IsZero() {
		return l.Snapshot
	}
	return l.Resolved
}

// ID is name:arch=version, apt's spelling of one exact package.
func (p Package) ID() string { return p.Name + ":" + p.Arch + "=" + p.Version }

// Lock is a resolved package closure.
type Lock struct {
	Format int `json:"format"`
	// Resolved is when apt resolved the closure (UTC, seconds).
	Resolved time.Time `json:"resolved"`
	// Snapshot is the snapshot-archive time of the lock's fallback URLs:
	// SnapshotTime of the newest Release file apt read, when every locked
	// package was in the archive. A lock without it (written before kiln
	// recorded it) falls back to Resolved.
	Snapshot time.Time `json:"snapshot,omitzero"`
	// Request is the request resolved, RequestHash its hash.
	Request     Request `json:"request"`
	RequestHash string  `json:"request_hash"`
	// Packages in apt's installation order (dependencies first).
	Packages []Package `json:"packages"`
}

// Marshal returns the lock's canonical text.
func (l *Lock) Marshal() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(l)
	return buf.Bytes()
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseLock parses and checks lock text.
func ParseLock(data []byte) (*Lock, error) {
	var l Lock
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLock, err)
	}
	if l.Format != LockFormat {
		return nil, fmt.Errorf("%w: format %d, this kiln reads %d", ErrLock, l.Format, LockFormat)
	}
	if l.Resolved.IsZero() {
		return nil, fmt.Errorf("%w: no resolution time", ErrLock)
	}
	if l.RequestHash != l.Request.Hash() {
		return nil, fmt.Errorf("%w: request_hash does not match its request", ErrLock)
	}
	seen := map[string]bool{}
	for i, p := range l.Packages {
		switch {
		case !pkgNameRE.MatchString(p.Name):
			return nil, fmt.Errorf("%w: package %d: bad name %q", ErrLock, i+1, p.Name)
		case p.Version == "" || strings.ContainsAny(p.Version, " /\t\n"):
			return nil, fmt.Errorf("%w: %s: bad version %q", ErrLock, p.Name, p.Version)
		case !archRE.MatchString(p.Arch):
			return nil, fmt.Errorf("%w: %s: bad arch %q", ErrLock, p.Name, p.Arch)
		case !sha256RE.MatchString(p.SHA256):
			return nil, fmt.Errorf("%w: %s: sha256 %q is not 64 lower-case hex digits", ErrLock, p.Name, p.SHA256)
		case p.Size <= 0:
			return nil, fmt.Errorf("%w: %s: size %d", ErrLock, p.Name, p.Size)
		case seen[p.Name+":"+p.Arch]:
			return nil, fmt.Errorf("%w: %s:%s is listed twice", ErrLock, p.Name, p.Arch)
		}
		if err := checkFilename(p.Filename); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrLock, p.Name, err)
		}
		seen[p.Name+":"+p.Arch] = true
	}
	return &l, nil
}

// ReadLock reads dir/rootfs.lock and checks it belongs to req.
func ReadLock(dir string, req Request) (*Lock, error) {
	file := filepath.Join(dir, LockFile)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	l, err := ParseLock(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if l.RequestHash != req.Hash() {
		return nil, fmt.Errorf("%s: %w", file, ErrStaleLock)
	}
	return l, nil
}

// WriteLock writes l to dir/rootfs.lock atomically.
func WriteLock(dir string, l *Lock) error {
	file := filepath.Join(dir, LockFile)
	tmp, err := os.CreateTemp(dir, ".rootfs.lock-*")
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(l.Marshal()); err != nil {
		tmp.Close()
		return fmt.Errorf("lock: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("lock: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

// Change is one difference between two locks.
type Change struct {
	Kind string `json:"kind"` // added, removed, upgraded, downgraded, rebuilt
	Name string `json:"name"`
	Arch string `json:"arch"`
	Old  string `json:"old,omitempty"`
	New  string `json:"new,omitempty"`
}

func (c Change) String() string {
	switch c.Kind {
	case "added":
		return fmt.Sprintf("added      %s:%s %s", c.Name, c.Arch, c.New)
	case "removed":
		return fmt.Sprintf("removed    %s:%s %s", c.Name, c.Arch, c.Old)
	}
	return fmt.Sprintf("%-10s %s:%s %s -> %s", c.Kind, c.Name, c.Arch, c.Old, c.New)
}

// Diff lists what changed from old to new, sorted by package name. A
// package whose version stayed but whose sha256 changed is "rebuilt" (a
// repository that replaced a file: suspicious, and shown).
func Diff(old, new *Lock) []Change {
	index := func(l *Lock) map[string]Package {
		m := map[string]Package{}
		if l != nil {
			for _, p := range l.Packages {
				m[p.Name+":"+p.Arch] = p
			}
		}
		return m
	}
	o, n := index(old), index(new)
	var out []Change
	for k, np := range n {
		op, ok := o[k]
		switch {
		case !ok:
			out = append(out, Change{"added", np.Name, np.Arch, "", np.Version})
		case op.Version != np.Version:
			kind := "upgraded"
			if CompareVersions(np.Version, op.Version) < 0 {
				kind = "downgraded"
			}
			out = append(out, Change{kind, np.Name, np.Arch, op.Version, np.Version})
		case op.SHA256 != np.SHA256:
			out = append(out, Change{"rebuilt", np.Name, np.Arch, op.Version + " sha256 " + op.SHA256[:12], np.Version + " sha256 " + np.SHA256[:12]})
		}
	}
	for k, op := range o {
		if _, ok := n[k]; !ok {
			out = append(out, Change{"removed", op.Name, op.Arch, op.Version, ""})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Arch < out[j].Arch
	})
	return out
}

// checkFilename accepts a repository-relative path that stays inside it.
func checkFilename(f string) error {
	clean := path.Clean(strings.TrimPrefix(f, "./"))
	if f == "" || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || !strings.HasSuffix(clean, ".deb") {
		return fmt.Errorf("filename %q is not a .deb path inside its repository", f)
	}
	return nil
}

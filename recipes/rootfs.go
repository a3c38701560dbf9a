package recipes

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/internal/debian"
)

// ErrNoLock: an image recipe declares a Debian root filesystem but its
// lock file is missing or was written for another package request.
var ErrNoLock = errors.New("root filesystem not locked")

// RootfsContent is the content source naming the assembled root
// filesystem: { from = "rootfs", to = "/" } in one squashfs or ext4
// partition.
const RootfsContent = "rootfs"

// ImageRootfs is the [image.rootfs] table: a root filesystem assembled
// from Debian packages. The package closure is not resolved at build time:
// `kiln lock` writes it to rootfs.lock beside recipe.toml, and the lock
// (every package's name, version, architecture and sha256) is part of the
// derivation.
type ImageRootfs struct {
	// Arch is the Debian architecture (arm64, armhf).
	Arch string `toml:"arch" json:"arch"`
	// Suites and Components select the package indexes.
	Suites     []string `toml:"suites" json:"suites"`
	Components []string `toml:"components" json:"components"`
	// Packages are the top-level packages; the lock holds their closure.
	Packages []string `toml:"packages" json:"packages"`
	// Essential adds the first suite's Essential: yes set.
	Essential bool `toml:"essential" json:"essential"`
	// Mirror is the repository ("file:/srv/debian", "https://…"); empty
	// means the host's apt sources. Not part of the derivation (the lock is).
	Mirror string `toml:"mirror" json:"-"`
	// Trusted accepts an unsigned repository (local test repositories).
	Trusted bool `toml:"trusted" json:"-"`
}

// Request is the resolver's view of the table.
func (r *ImageRootfs) Request() debian.Request {
	return debian.Request{Arch: r.Arch, Suites: r.Suites, Components: r.Components, Packages: r.Packages,
		Essential: r.Essential, Mirror: r.Mirror, Trusted: r.Trusted}
}

// Lock reads the recipe's rootfs.lock, checking that it resolves this
// table's request; a missing or stale lock wraps ErrNoLock.
func (r *ImageRootfs) Lock(recipeDir string) (*debian.Lock, error) {
	l, err := debian.ReadLock(recipeDir, r.Request())
	if err != nil {
		if errors.Is(err, debian.ErrStaleLock) || errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoLock, err)
		}
		return nil, err
	}
	return l, nil
}

// LockPath is where the lock of a recipe directory lives.
func LockPath(recipeDir string) string { return filepath.Join(recipeDir, debian.LockFile) }

// imageDerivation is an image recipe's part of the derivation when it has
// a Debian root: the spec and the lock's package pins.
type imageDerivation struct {
	*ImageSpec
	RootfsLock []lockedPin `json:"rootfs_lock"`
}

// lockedPin is one locked package in the derivation: what is installed,
// not where it is fetched from.
type lockedPin struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
}

// DeriveKind puts the lock's pins into the derivation (a recipe without a
// Debian root derives exactly as before: the spec alone).
func (s *ImageSpec) DeriveKind(r *Recipe) (any, error) {
	if s.Rootfs == nil {
		return s, nil
	}
	l, err := s.Rootfs.Lock(r.Dir)
	if err != nil {
		return nil, err
	}
	d := imageDerivation{ImageSpec: s}
	for _, p := range l.Packages {
		d.RootfsLock = append(d.RootfsLock, lockedPin{p.Name, p.Version, p.Arch, p.SHA256})
	}
	return d, nil
}

// LockInputs turns a lock's packages into fixed-output inputs, in the
// lock's order, each with its sources in the order they are tried: the
// recipe's mirror (or, for the host's Debian mirror, apt-get download of
// the exact version through kiln's private apt state), then the snapshot
// archive's copy as of the lock's snapshot time (snapshotBase is
// debian.SnapshotBase unless a stand-in serves it). Each is named
// "deb-NAME-ARCH" and checked against its locked sha256.
func LockInputs(l *debian.Lock, snapshotBase string) ([]Input, error) {
	var out []Input
	for _, p := range l.Packages {
		in := Input{Name: "deb-" + p.Name + "-" + p.Arch, SHA256: p.SHA256, File: path.Base(p.Filename)}
		switch m := l.Request.Mirror; {
		case m == "":
			in.Sources = append(in.Sources, "deb:"+p.Name+":"+l.Request.Arch+"="+p.Version)
		case strings.HasPrefix(m, "file:"):
			in.Sources = append(in.Sources, "file:"+strings.TrimSuffix(strings.TrimPrefix(m, "file:"), "/")+"/"+strings.TrimPrefix(p.Filename, "./"))
		default:
			in.Sources = append(in.Sources, strings.TrimSuffix(m, "/")+"/"+strings.TrimPrefix(p.Filename, "./"))
		}
		if p.Archive != "" {
			u, err := debian.SnapshotURL(snapshotBase, p.Archive, l.SnapshotAt(), p.Filename)
			if err != nil {
				return nil, fmt.Errorf("lock: %s: %w", p.Name, err)
			}
			in.Sources = append(in.Sources, u)
		}
		out = append(out, in)
	}
	return out, nil
}

package rootfs

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"kiln.dev/kiln"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/store"
)

// AssemblyVersion is the version of the root entry's layout (root.tar
// and root.json as Realise writes and checks them). What kiln's code does
// to the tree needs no bump: every root derivation also covers kiln's
// builder digest (kiln.BuilderDigest: the sources of image/rootfs,
// internal/fetch and every other output-shaping package), so a root kept
// by another kiln is never reused, while images that differ only in their
// overlay, boot files or layout (recipe data, not code) still share one.
const AssemblyVersion = 1

// ArchiveFile is the assembled root inside its store entry (WriteTar's
// PAX tar), and InfoFile the entry's own account of it.
const (
	ArchiveFile = "root.tar"
	InfoFile    = "root.json"
)

// Info is InfoFile: what the root was assembled from, and its archive's
// sha256 (which the store's seal must also say).
type Info struct {
	Derivation string `json:"derivation"`
	Assembly   int    `json:"assembly"`
	Arch       string `json:"arch"`
	Epoch      int64  `json:"source_date_epoch"`
	LockSHA256 string `json:"lock_sha256"`
	Packages   int    `json:"packages"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size"`
}

// rootDerivation is what the root derivation's hash covers: exactly what
// determines Assemble's tree.
type rootDerivation struct {
	Kind     string `json:"kind"`
	Assembly int    `json:"assembly"`
	Builder  string `json:"builder_digest"`
	Arch     string `json:"arch"`
	Epoch    int64  `json:"source_date_epoch"`
	// Lock is the sha256 of the lock's canonical text (debian.Lock.Marshal,
	// the bytes kiln lock writes): every package's name, version,
	// architecture, sha256, apt's order and the essential set.
	Lock string `json:"lock_sha256"`
}

// RootDerivation returns the hex sha256 naming the root assembled from
// lock at epoch: lock's canonical bytes, its architecture, epoch and
// AssemblyVersion and kiln's builder digest. Nothing else (the image's overlay, boot files, layout)
// changes it, so images that differ only there share one root.
func RootDerivation(lock *debian.Lock, epoch int64) string {
	ls := sha256.Sum256(lock.Marshal())
	d := rootDerivation{Kind: "debian-root", Assembly: AssemblyVersion, Builder: kiln.BuilderDigest(), Arch: lock.Request.Arch, Epoch: epoch,
		Lock: hex.EncodeToString(ls[:])}
	data, _ := json.Marshal(d)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Request asks Realise for the root of one lock.
type Request struct {
	Lock  *debian.Lock
	Epoch int64
	// Debs brings the lock's .debs (in the lock's order); it is called only
	// when the root must be assembled.
	Debs func(ctx context.Context) ([]Deb, error)
	// Log receives progress lines; may be nil.
	Log func(format string, args ...any)
}

// Root is a realised root: its derivation, its store entry and how
// Realise came by it (store.Hit: found and verified; store.Built:
// assembled now).
type Root struct {
	Derivation string
	Path       string
	How        store.How
	Info       Info
}

// Realise finds the root of req's lock in st, or assembles it (Assemble,
// in a directory beside the store) and adds it as an entry holding
// ArchiveFile and InfoFile. Like every store entry it is verified against
// its seal before use (store.Realise): an entry that fails is an error
// wrapping store.ErrTampered, never used and never silently rebuilt over.
func Realise(ctx context.Context, st *store.Store, req Request) (*Root, error) {
	if req.Lock == nil || len(req.Lock.Packages) == 0 {
		return nil, fmt.Errorf("rootfs: no packages")
	}
	logf := req.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	hash := RootDerivation(req.Lock, req.Epoch)
	arch := req.Lock.Request.Arch
	var info Info
	rz, err := st.Realise(ctx, store.Request{
		Hash: hash, Name: "rootfs-" + arch,
		Build: func(ctx context.Context, out string) error {
			debs, err := req.Debs(ctx)
			if err != nil {
				return err
			}
			return build(ctx, out, hash, req, debs, logf)
		},
		Check: func(dir string, entry *store.Manifest) error {
			data, err := os.ReadFile(filepath.Join(dir, InfoFile))
			if err != nil {
				return err
			}
			var in Info
			if err := json.Unmarshal(data, &in); err != nil {
				return fmt.Errorf("%s: %w", InfoFile, err)
			}
			if in.Derivation != hash {
				return fmt.Errorf("%s names derivation %s", InfoFile, in.Derivation)
			}
			if err := store.CheckOutputs(entry, map[string]string{ArchiveFile: in.SHA256}, InfoFile); err != nil {
				return err
			}
			info = in
			return nil
		},
		// A root is built here from fixed-output .debs: no binary cache
		// is asked for it.
		NoSubstitute: true,
		Log:          logf,
	})
	if err != nil {
		return nil, fmt.Errorf("rootfs: root %s: %w", hash[:12], err)
	}
	return &Root{Derivation: hash, Path: rz.Path, How: rz.How, Info: info}, nil
}

// build assembles the root and writes its archive and info into out.
func build(ctx context.Context, out, hash string, req Request, debs []Deb, logf func(string, ...any)) error {
	// The tree is assembled beside the entry being written (the same
	// file system as the store), not inside it: only the archive enters.
	// Named as the store names its own temporary directories, so kiln
	// store gc removes it if this process dies.
	work, err := os.MkdirTemp(filepath.Dir(out), fmt.Sprintf(".tmp-%d-rootfs-", os.Getpid()))
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	arch := req.Lock.Request.Arch
	if err := Assemble(ctx, root, Options{Arch: arch, Debs: debs, Epoch: req.Epoch, Log: req.Log}); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(out, ArchiveFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	err = WriteTar(ctx, root, bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fi, err := os.Stat(filepath.Join(out, ArchiveFile))
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	ls := sha256.Sum256(req.Lock.Marshal())
	info := Info{Derivation: hash, Assembly: AssemblyVersion, Arch: arch, Epoch: req.Epoch,
		LockSHA256: hex.EncodeToString(ls[:]), Packages: len(debs), SHA256: hex.EncodeToString(h.Sum(nil)), Size: fi.Size()}
	js, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(filepath.Join(out, InfoFile), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	logf("stored the %s root as %s (%d MB)", arch, ArchiveFile, fi.Size()>>20)
	return nil
}

// Unpack extracts the root into dir (empty) with ExtractTar, hashing the
// archive as it reads it: the bytes unpacked must be the bytes the
// store's seal and InfoFile name, or it fails with store.ErrTampered.
func (r *Root) Unpack(ctx context.Context, dir string) error {
	f, err := os.Open(filepath.Join(r.Path, ArchiveFile))
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	tee := io.TeeReader(bufio.NewReaderSize(f, 1<<20), h)
	xerr := ExtractTar(ctx, tee, dir)
	// The rest (the tar's end padding, or what a failed extraction left
	// unread) is hashed too: a changed archive is reported as changed,
	// whatever the extraction made of it.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != r.Info.SHA256 {
		return fmt.Errorf("rootfs: %s: %w: %s changed since it was verified (sha256 %s, sealed %s)",
			filepath.Base(r.Path), store.ErrTampered, ArchiveFile, got[:12], r.Info.SHA256[:min(12, len(r.Info.SHA256))])
	}
	return xerr
}

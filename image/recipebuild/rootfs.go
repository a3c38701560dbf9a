package recipebuild

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// rootFilesystem makes partition i's filesystem image from the recipe's
// Debian root, a store derivation of its own (image/rootfs.Realise: keyed
// by the lock, the architecture, SOURCE_DATE_EPOCH and the assembly
// version, so builds that differ only in the overlay or outside the root
// share it). The root is found in the store (verified against its seal)
// or assembled from the locked .debs (fetched, or found in the store) in
// the build sandbox and stored; it is unpacked under tmp, the partition's
// other contents (overlay) are laid over it, and the result becomes a
// squashfs or ext4 image under tmp, made from the directory as it is
// (owners, modes, set-id bits, device nodes, hard links and extended
// attributes kept), which it returns.
func (b *builder) rootFilesystem(ctx context.Context, f *fetch.Fetcher, spec *recipes.ImageSpec, l *image.Layout, i int,
	overlay *image.Tree, tmp string, log func(format string, args ...any)) (string, error) {
	lock, err := spec.Rootfs.Lock(b.r.Dir)
	if err != nil {
		return "", err
	}
	logf := func(format string, args ...any) {
		if log != nil {
			log(format, args...)
		}
	}
	debs := func(ctx context.Context) ([]rootfs.Deb, error) {
		ins, err := recipes.LockInputs(lock, debian.SnapshotBase)
		if err != nil {
			return nil, err
		}
		if err := f.PrefetchDebs(ctx, ins); err != nil {
			return nil, err
		}
		debs := make([]rootfs.Deb, len(ins))
		for j, in := range ins {
			p, err := f.DebFile(ctx, in)
			if err != nil {
				return nil, err
			}
			debs[j] = rootfs.Deb{Name: lock.Packages[j].Name, Path: p, Base: lock.Packages[j].Base}
		}
		return debs, nil
	}
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	epoch := spec.SourceDateEpoch
	drv := rootfs.RootDerivation(lock, epoch)
	if b.store == nil || b.rebuildRoot {
		// No store (or a rebuild that must assemble the root too): the
		// root is assembled here and not kept.
		ds, err := debs(ctx)
		if err != nil {
			return "", err
		}
		logf("root filesystem %s: assembling (not from the store)", drv)
		if err := rootfs.Assemble(ctx, root, rootfs.Options{Arch: lock.Request.Arch, Debs: ds, Epoch: epoch, Log: log}); err != nil {
			return "", err
		}
		b.root = &RootfsRef{Derivation: drv, How: store.Built}
	} else {
		r, err := rootfs.Realise(ctx, b.store, rootfs.Request{Lock: lock, Epoch: epoch, Debs: debs, Log: log})
		if err != nil {
			return "", err
		}
		if r.How == store.Hit {
			logf("root filesystem %s: found in the store (%s), not assembled", r.Derivation, r.Path)
		} else {
			logf("root filesystem %s: assembled and stored (%s)", r.Derivation, r.Path)
		}
		if err := r.Unpack(ctx, root); err != nil {
			return "", err
		}
		b.root = &RootfsRef{Derivation: r.Derivation, Entry: r.Path, How: r.How}
	}
	if err := overlay.Overlay(root, epoch); err != nil {
		return "", err
	}
	p := l.Partitions[i]
	if p.FS == image.Ext4 {
		return image.MakeExt4Dir(ctx, root, p.Size, image.Ext4Options{UUID: l.FSUUID(i),
			HashSeed: image.DeriveUUID(l.Seed, fmt.Sprintf("ext4-hash-seed-%d", i+1)), Label: p.Label, Epoch: epoch}, tmp)
	}
	out := filepath.Join(tmp, "root.squashfs")
	if err := rootfs.Squashfs(ctx, root, out, epoch, p.Compression); err != nil {
		return "", err
	}
	return out, nil
}

// RootfsRef names the Debian root an image was built on: its own
// derivation (image/rootfs.RootDerivation), in manifest.json; where this
// run found it and how (store.Hit: reused; store.Built: assembled) are
// not recorded there (two builds of one image may differ in them).
type RootfsRef struct {
	Derivation string    `json:"derivation"`
	Entry      string    `json:"-"`
	How        store.How `json:"-"`
}

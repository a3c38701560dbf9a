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
	"kiln.dev/kiln/recipes"
)

// rootFilesystem makes partition i's filesystem image from the recipe's
// Debian root: the locked .debs (fetched, or found in the store) are
// assembled in the build sandbox (image/rootfs), the partition's other
// contents (overlay) are laid over the root, and the result becomes a
// squashfs or ext4 image under tmp, made from the directory as it is
// (owners, modes, set-id bits, device nodes, hard links and extended
// attributes kept), which it returns.
func (b *builder) rootFilesystem(ctx context.Context, f *fetch.Fetcher, spec *recipes.ImageSpec, l *image.Layout, i int,
	overlay *image.Tree, tmp string, log func(format string, args ...any)) (string, error) {
	lock, err := spec.Rootfs.Lock(b.r.Dir)
	if err != nil {
		return "", err
	}
	ins, err := recipes.LockInputs(lock, debian.SnapshotBase)
	if err != nil {
		return "", err
	}
	if err := f.PrefetchDebs(ctx, ins); err != nil {
		return "", err
	}
	debs := make([]rootfs.Deb, len(ins))
	for j, in := range ins {
		p, err := f.DebFile(ctx, in)
		if err != nil {
			return "", err
		}
		debs[j] = rootfs.Deb{Name: lock.Packages[j].Name, Path: p, Base: lock.Packages[j].Base}
	}
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	epoch := spec.SourceDateEpoch
	if err := rootfs.Assemble(ctx, root, rootfs.Options{Arch: lock.Request.Arch, Debs: debs, Epoch: epoch, Log: log}); err != nil {
		return "", err
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
	if err := rootfs.Squashfs(ctx, root, out, epoch); err != nil {
		return "", err
	}
	return out, nil
}

package rpidebian_test

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/image/rootfs/rootfstest"
	"kiln.dev/kiln/recipes"
)

// TestRPiDebianRootMatchesMmdebstrap (issue 17, must-show 2): the root slot
// of the built image, unpacked with its owners, holds what mmdebstrap
// makes of the same locked packages (its essential variant plus the recipe's
// top-level packages, as rootfstest.Variant explains, from a repository
// holding exactly the locked .debs, in kiln's sandbox): the same file
// list, owners, modes,
// contents, extended attributes and /var/lib/dpkg/status, apart from a
// documented list: mmdebstrap's own additions
// (rootfstest.MmdebstrapDifferences), what kiln empties or leaves to first
// boot (rootfstest.CleanupDifferences), what squashfs cannot hold
// (rootfstest.SquashfsDifferences), what depends on the order maintainer
// scripts ran in (rootfstest.OrderDifferences, and dynamic system groups
// numbered otherwise, checked to be nothing more by
// rootfstest.RenumberedGroups) and the recipe's overlay, read from the
// recipe itself. Every entry of that list must explain at least one
// path. mmdebstrap's root is built once and cached
// ($HOME/.cache/kiln-test/mmdebstrap/<key>).
func TestRPiDebianRootMatchesMmdebstrap(t *testing.T) {
	dir := rpiDebianImage(t, 1)
	start := time.Now()
	r, err := recipes.Load(rpiDebian)
	if err != nil {
		t.Fatal(err)
	}
	spec := r.KindData.(*recipes.ImageSpec)
	lock, err := spec.Rootfs.Lock(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	debs, err := rootfstest.Debs(context.Background(), testCache(t, "rootfs-store"), lock)
	if err != nil {
		t.Fatalf("the locked .debs (kiln fetch keeps them in the shared store; network to Debian once): %v", err)
	}
	t0 := time.Now()
	mm := rootfstest.MmdebstrapRoot(t, lock, debs, spec.SourceDateEpoch)
	t.Logf("mmdebstrap's root for %d packages: %v", len(lock.Packages), time.Since(t0).Round(time.Second))

	img := filepath.Join(dir, "image.img")
	m := manifest(t, dir)
	var part recipes.ImagePartition
	for _, p := range spec.Partitions {
		if p.Slot == "a" && p.FS == "squashfs" {
			part = p
		}
	}
	_, p := partition(t, img, m, part.Name)
	root := filepath.Join(t.TempDir(), "root")
	// As root, unsquashfs restores owners, modes, set-id bits, hard links
	// and extended attributes.
	run(t, "unsquashfs", "-n", "-d", root, extract(t, img, p))

	kt, mt := rootfstest.Walk(t, root), rootfstest.Walk(t, mm)
	var known []rootfstest.Difference
	for _, l := range [][]rootfstest.Difference{rootfstest.MmdebstrapDifferences, rootfstest.CleanupDifferences,
		rootfstest.SquashfsDifferences, rootfstest.OrderDifferences, rootfstest.RenumberedGroups(t, root, mm, kt, mt),
		overlayDifferences(t, r, part, mt)} {
		known = append(known, l...)
	}
	rootfstest.Compare(kt, mt, known).Check(t, known)
	rootfstest.CheckDpkgStatus(t, root, mm, lock)
	t.Logf("compared in %v", time.Since(start).Round(time.Second))
}

// overlayDifferences are the paths the recipe lays over the Debian root of
// partition part, read from the recipe: every file its src: contents
// hold, every directory of theirs mmdebstrap's root lacks (the overlay
// makes it), and the derivation file.
func overlayDifferences(t *testing.T, r *recipes.Recipe, part recipes.ImagePartition, mm rootfstest.Tree) []rootfstest.Difference {
	t.Helper()
	var ds []rootfstest.Difference
	for _, c := range part.Contents {
		if c.From == recipes.RootfsContent {
			continue
		}
		rel, ok := strings.CutPrefix(c.From, "src:")
		if !ok {
			t.Fatalf("partition %s: content %s: only recipe files (src:) are enumerated as overlay differences", part.Name, c.From)
		}
		to := strings.TrimPrefix(path.Clean("/"+c.To), "/")
		src := filepath.Join(r.Dir, filepath.FromSlash(rel))
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			sub, err := filepath.Rel(src, p)
			if err != nil {
				return err
			}
			dst := path.Join(to, filepath.ToSlash(sub))
			if dst == "" || dst == "." {
				return nil
			}
			why := "the recipe's overlay: " + path.Join(rel, filepath.ToSlash(sub))
			if d.IsDir() {
				if _, ok := mm[dst]; ok {
					return nil
				}
				why = "a directory the recipe's overlay makes: " + path.Join(rel, filepath.ToSlash(sub))
			}
			ds = append(ds, rootfstest.Difference{Path: dst, Why: why})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if part.DerivationFile != "" {
		p := path.Clean(part.DerivationFile)
		ds = append(ds, rootfstest.Difference{Path: p, Why: fmt.Sprintf("the image's derivation hash (derivation_file of partition %s)", part.Name)})
	}
	if len(ds) == 0 {
		t.Fatalf("partition %s lays nothing over the root: the recipe is not what this test expects", part.Name)
	}
	return ds
}

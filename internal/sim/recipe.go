package sim

import (
	"context"
	"fmt"
	"path/filepath"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/store"
)

// FromRecipe builds the recipe in dir through the store (a store hit runs
// no compiler) and loads the store entry's image: what runs is exactly what
// `kiln flash` writes for the recipe. The artifact names the store's
// firmware file and its sha256.
func FromRecipe(ctx context.Context, dir string, st *store.Store) (*Artifact, *firmware.Result, error) {
	res, err := firmware.Build(ctx, firmware.Options{Dir: dir, Store: st})
	if err != nil {
		return nil, nil, err
	}
	a, err := LoadArtifact(res.StorePath, nil)
	if err != nil {
		return nil, nil, err
	}
	if want := res.Manifest.Outputs[filepath.Base(a.Path)].SHA256; want != "" && want != a.SHA256 {
		return nil, nil, fmt.Errorf("sim: %s: %w: sha256 %s, the manifest says %s", a.Path, store.ErrTampered, a.SHA256, want)
	}
	return a, res, nil
}

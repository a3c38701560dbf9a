package recipebuild

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/image"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// Realise builds the image recipe in dir into the store, or finds it there
// (store.Realise: verified against the entry's seal and manifest.json's
// hashes before it is used). The entry holds image.img, image.bmap and
// manifest.json; Export adds image.img.xz where the outputs are published.
func Realise(ctx context.Context, dir string, opts Options) (*Result, *store.Realised, error) {
	if opts.Store == nil {
		return nil, nil, fmt.Errorf("image: realise %s: no store", dir)
	}
	r, err := recipes.Load(dir)
	if err != nil {
		return nil, nil, err
	}
	if r.Kind != recipes.KindImage {
		return nil, nil, fmt.Errorf("image: %s is a %s recipe, not an image recipe", r.File, r.Kind)
	}
	d, err := r.Derive()
	if err != nil {
		return nil, nil, err
	}
	hash := d.Hash()
	var res, built *Result
	bo := opts
	bo.NoXZ = true
	logf := func(format string, a ...any) {
		if opts.Log != nil {
			opts.Log(format, a...)
		}
	}
	rz, err := opts.Store.Realise(ctx, store.Request{
		Hash: hash, Name: r.Name,
		Build: func(ctx context.Context, out string) error {
			logf("building %s (derivation %s)", r.File, hash)
			var err error
			built, err = Build(ctx, dir, out, bo)
			return err
		},
		Check: func(entryDir string, entry *store.Manifest) error {
			var err error
			res, err = checkEntry(entryDir, entry, hash)
			return err
		},
		Substitute: opts.Substitute,
		Log:        logf,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("image: %s: %w", r.Name, err)
	}
	if built != nil && built.Rootfs != nil && res.Rootfs != nil && res.Rootfs.Derivation == built.Rootfs.Derivation {
		// How this run came by the root is not in manifest.json.
		res.Rootfs.Entry, res.Rootfs.How = built.Rootfs.Entry, built.Rootfs.How
	}
	return res, rz, nil
}

// checkEntry checks a verified store entry against its manifest.json.
func checkEntry(dir string, entry *store.Manifest, hash string) (*Result, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestFile, err)
	}
	if res.Derivation != hash {
		return nil, fmt.Errorf("%s names derivation %s", ManifestFile, res.Derivation)
	}
	if _, ok := res.Outputs[image.ImageFile]; !ok {
		return nil, fmt.Errorf("%s names no %s", ManifestFile, image.ImageFile)
	}
	outs := map[string]string{}
	for name, o := range res.Outputs {
		outs[name] = o.SHA256
	}
	if err := store.CheckOutputs(entry, outs, ManifestFile); err != nil {
		return nil, err
	}
	return &res, nil
}

// Export publishes a realised image into out (store.Publish: no name
// already in out is opened): image.img and image.bmap copied from the
// entry, image.img.xz compressed from it (unless opts.NoXZ), and a
// manifest.json that lists them. It returns the result as exported.
func Export(ctx context.Context, res *Result, entry, out string, opts Options) (*Result, error) {
	exp := *res
	exp.Outputs = map[string]Out{}
	for k, v := range res.Outputs {
		exp.Outputs[k] = v
	}
	var files []store.File
	for _, name := range []string{image.ImageFile, image.BmapFile} {
		if _, ok := res.Outputs[name]; ok {
			files = append(files, store.File{Name: name, From: filepath.Join(entry, name)})
		}
	}
	if !opts.NoXZ {
		if opts.Progress != nil {
			opts.Progress("xz", 0, 1)
		}
		// The .xz is compressed into the private directory first, then
		// hashed there, so its manifest line names the bytes published.
		if err := os.MkdirAll(out, 0o755); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		tmp, err := os.MkdirTemp(out, ".kiln-xz-")
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		defer os.RemoveAll(tmp)
		xzPath := filepath.Join(tmp, image.XZFile)
		if err := compressFile(ctx, filepath.Join(entry, image.ImageFile), xzPath, opts.XZ); err != nil {
			return nil, err
		}
		sum, err := store.HashFile(xzPath)
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		fi, err := os.Stat(xzPath)
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		exp.Outputs[image.XZFile] = Out{SHA256: sum, Size: fi.Size()}
		if exp.Image != nil {
			rep := *exp.Image
			rep.Files = map[string]string{}
			for k, v := range exp.Image.Files {
				rep.Files[k] = v
			}
			rep.Files[image.XZFile] = sum
			exp.Image = &rep
		}
		files = append(files, store.File{Name: image.XZFile, From: xzPath})
	}
	js, err := json.MarshalIndent(&exp, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	files = append(files, store.File{Name: ManifestFile, Data: append(js, '\n')})
	if err := store.Publish(out, files); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return &exp, nil
}

func compressFile(ctx context.Context, src, dst string, opts image.XZOptions) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := image.CompressXZ(ctx, out, in, opts); err != nil {
		out.Close()
		return fmt.Errorf("image: xz: %w", err)
	}
	return out.Close()
}

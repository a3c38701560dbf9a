package recipes

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"kiln.dev/kiln"
	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/internal/beneath"
	"kiln.dev/kiln/internal/store"
)

// FormatVersion is the builder's derivation format. Changing what a build
// does with the same inputs must bump it, so old store entries are not reused.
const FormatVersion = 1

// SourceFile is one recipe file in the derivation.
type SourceFile struct {
	Path   string `json:"path"` // slash-separated, relative to the recipe directory
	SHA256 string `json:"sha256"`
	// Compile is true for files matched by the recipe's sources (compiled
	// into the program), false for files matched only by files.
	Compile bool `json:"compile,omitempty"`
}

// InputPin is an input in the derivation: its name, hash and root, not
// where it is fetched from.
type InputPin struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Subdir string `json:"subdir,omitempty"`
	File   string `json:"file,omitempty"`
	// Executable: see Input.Executable.
	Executable bool `json:"executable,omitempty"`
	// Unpack: see Input.Unpack.
	Unpack bool `json:"unpack,omitempty"`
}

// StoreKey is the hash of the input's store entry (see Input.StoreKey).
func (p InputPin) StoreKey() string {
	return Input{Name: p.Name, SHA256: p.SHA256, File: p.File, Executable: p.Executable, Unpack: p.Unpack}.StoreKey()
}

// Derivation is the canonical description of a build: everything that
// affects its outputs and nothing that does not (not the recipe's
// directory, not where inputs are fetched from). Its JSON is canonical
// (struct fields in a fixed order, maps with sorted keys, sorted lists), and
// its sha256 is the derivation hash.
type Derivation struct {
	Format int `json:"format"`
	// BuilderDigest is kiln.BuilderDigest(): a hash of the code of every
	// package that shapes outputs, so a change to it is a new derivation.
	BuilderDigest string        `json:"builder_digest"`
	Name          string        `json:"name"`
	Version       string        `json:"version"`
	Kind          string        `json:"kind"`
	Board         *boards.Board `json:"board"`
	Toolchain     *ToolchainPin `json:"toolchain,omitempty"`
	// ToolchainHash is Toolchain.Hash(): the toolchain's store key.
	ToolchainHash string `json:"toolchain_hash,omitempty"`
	// Globs are the recipe's sources and files globs as written.
	Globs struct {
		Sources []string `json:"sources"`
		Files   []string `json:"files,omitempty"`
	} `json:"globs"`
	Sources []SourceFile `json:"source_files"`
	Inputs  []InputPin   `json:"inputs,omitempty"`
	Build   Build        `json:"build"`
	// Kind-specific part (image recipes).
	Extra any `json:"extra,omitempty"`

	recipe *Recipe
	tc     *Toolchain
}

// Derive resolves the board and toolchain, expands the source globs (a glob
// that matches nothing is an error wrapping ErrNoMatch that names the recipe
// file and the glob) and hashes every source file. It uses no network.
func (r *Recipe) Derive() (*Derivation, error) {
	board, err := boards.Get(r.Board)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.File, err)
	}
	d := &Derivation{
		Format: FormatVersion, BuilderDigest: kiln.BuilderDigest(), Name: r.Name, Version: r.Version, Kind: r.Kind,
		Board: board, Build: r.Build, Extra: r.KindData, recipe: r,
	}
	if r.Toolchain != "" {
		tc, err := LoadToolchain(r.Toolchain)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.File, err)
		}
		pin := tc.Pin()
		d.tc, d.Toolchain, d.ToolchainHash = tc, &pin, tc.Hash()
	}
	d.Globs.Sources = append([]string{}, r.Sources...)
	d.Globs.Files = r.Files
	files := map[string]*SourceFile{}
	expand := func(globs []string, compile bool) error {
		for _, g := range globs {
			matches, err := filepath.Glob(filepath.Join(r.Dir, filepath.FromSlash(g)))
			if err != nil {
				return fmt.Errorf("%s: glob %q: %w", r.File, g, err)
			}
			n := 0
			for _, m := range matches {
				rel, err := filepath.Rel(r.Dir, m)
				if err != nil {
					return fmt.Errorf("%s: %w", r.File, err)
				}
				rel = filepath.ToSlash(rel)
				fi, err := r.statFile(rel)
				if err != nil {
					return err
				}
				if !fi.Mode().IsRegular() {
					continue
				}
				n++
				if f := files[rel]; f != nil {
					f.Compile = f.Compile || compile
					continue
				}
				files[rel] = &SourceFile{Path: rel, Compile: compile}
			}
			if n == 0 {
				return fmt.Errorf("%s: source glob %q %w", r.File, g, ErrNoMatch)
			}
		}
		return nil
	}
	if err := expand(r.Sources, true); err != nil {
		return nil, err
	}
	if err := expand(r.Files, false); err != nil {
		return nil, err
	}
	// A linker script in the recipe directory is read by the build: hash it.
	if ls := r.Build.LinkerScript; len(ls) > 5 && ls[:5] == "$src/" {
		rel := ls[5:]
		if files[rel] == nil {
			fi, err := r.statFile(rel)
			if errors.Is(err, beneath.ErrEscapes) {
				return nil, err
			}
			if err != nil || !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("%s: linker script %q: %w", r.File, ls, ErrNoMatch)
			}
			files[rel] = &SourceFile{Path: rel}
		}
	}
	for _, f := range files {
		sum, err := r.hashFile(f.Path)
		if err != nil {
			return nil, err
		}
		f.SHA256 = sum
		d.Sources = append(d.Sources, *f)
	}
	sort.Slice(d.Sources, func(i, j int) bool { return d.Sources[i].Path < d.Sources[j].Path })
	if kd, ok := r.KindData.(KindDeriver); ok {
		if d.Extra, err = kd.DeriveKind(r); err != nil {
			return nil, fmt.Errorf("%s: %w", r.File, err)
		}
	}
	for _, in := range r.Inputs {
		d.Inputs = append(d.Inputs, InputPin{Name: in.Name, SHA256: in.SHA256, Subdir: in.Subdir, File: in.File, Executable: in.Executable, Unpack: in.Unpack})
	}
	sort.Slice(d.Inputs, func(i, j int) bool { return d.Inputs[i].Name < d.Inputs[j].Name })
	return d, nil
}

// Hash is the derivation hash: hex sha256 of the canonical JSON.
func (d *Derivation) Hash() string { return hashJSON(d) }

// JSON is the canonical serialisation that Hash hashes.
func (d *Derivation) JSON() []byte {
	b, err := json.Marshal(d)
	if err != nil {
		panic("recipes: canonical json: " + err.Error())
	}
	return b
}

// SourceFiles are the recipe files the build reads, sorted by path.
func (d *Derivation) SourceFiles() []SourceFile { return append([]SourceFile(nil), d.Sources...) }

// Recipe is the recipe the derivation was made from.
func (d *Derivation) Recipe() *Recipe { return d.recipe }

// ToolchainDef is the resolved toolchain closure, nil for a recipe without one.
func (d *Derivation) ToolchainDef() *Toolchain { return d.tc }

// HashFile returns the hex sha256 of a file's content (the store's hashing path).
func HashFile(name string) (string, error) { return store.HashFile(name) }

// OpenFile opens a file of the recipe directory by its slash-separated
// path, refusing (an error wrapping beneath.ErrEscapes, naming the file)
// one that is, or lies under, a symlink resolving outside the directory:
// a build reads exactly the recipe files the derivation hashed.
func (r *Recipe) OpenFile(rel string) (*os.File, error) {
	f, err := beneath.Open(r.Dir, rel, 0)
	if errors.Is(err, beneath.ErrEscapes) {
		return nil, fmt.Errorf("%s: recipe file %s: %w the recipe directory (a symlink): refused", r.File, rel, beneath.ErrEscapes)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.File, err)
	}
	return f, nil
}

func (r *Recipe) statFile(rel string) (os.FileInfo, error) {
	f, err := r.OpenFile(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

func (r *Recipe) hashFile(rel string) (string, error) {
	f, err := r.OpenFile(rel)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %s: %w", r.File, rel, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

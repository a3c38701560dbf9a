package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// pinChange is one line of kiln lock --pins' report.
type pinChange struct {
	File string `json:"file"`
	// Kind: upgraded, downgraded, fallback (a snapshot URL added or moved),
	// gone (the archive no longer has the pinned version).
	Kind      string `json:"kind"`
	Input     string `json:"input"`
	Package   string `json:"package"` // NAME:ARCH
	Old       string `json:"old"`
	New       string `json:"new,omitempty"`
	OldSHA256 string `json:"old_sha256"`
	NewSHA256 string `json:"new_sha256,omitempty"`
	Snapshot  string `json:"snapshot,omitempty"`
}

func (p pinChange) String() string {
	switch p.Kind {
	case "fallback":
		return fmt.Sprintf("%-10s %s %s %s", p.Kind, p.Package, p.Old, p.Snapshot)
	case "gone":
		return fmt.Sprintf("%-10s %s %s: no longer in the archive", p.Kind, p.Package, p.Old)
	}
	return fmt.Sprintf("%-10s %s %s -> %s (sha256 %s -> %s)", p.Kind, p.Package, p.Old, p.New, p.OldSHA256, p.NewSHA256)
}

type pinsReport struct {
	Changes []pinChange `json:"changes"`
	Written []string    `json:"written"`
}

// pinFile is one file whose deb: pins kiln lock --pins maintains.
type pinFile struct {
	path   string
	inputs []recipes.Input
	// parse reads the file's text as loadPinFile did: a recipe's inputs,
	// a toolchain's packages.
	parse func(file string, data []byte) ([]recipes.Input, error)
	// rootfs: an image recipe with [image.rootfs], whose rootfs.lock plain
	// kiln lock resolves.
	rootfs bool
}

// recipeInputs parses recipe text and returns its inputs.
func recipeInputs(file string, data []byte) ([]recipes.Input, error) {
	r, err := recipes.Parse(file, data)
	if err != nil {
		return nil, err
	}
	return r.Inputs, nil
}

// toolchainPackages parses a toolchain file and returns its packages.
func toolchainPackages(file string, data []byte) ([]recipes.Input, error) {
	tc, err := recipes.ParseToolchain(file, data)
	if err != nil {
		return nil, err
	}
	return tc.Packages, nil
}

// loadPinFile reads a recipe directory (its recipe.toml's inputs) or a
// toolchain file (its packages).
func loadPinFile(arg string) (pinFile, error) {
	if fi, err := os.Stat(arg); err == nil && fi.IsDir() || filepath.Base(arg) == "recipe.toml" {
		r, err := recipes.Load(strings.TrimSuffix(arg, "recipe.toml"))
		if err != nil {
			return pinFile{}, recipeHint(err)
		}
		spec, ok := r.KindData.(*recipes.ImageSpec)
		return pinFile{r.File, r.Inputs, recipeInputs, ok && spec.Rootfs != nil}, nil
	}
	data, err := os.ReadFile(arg)
	if err != nil {
		return pinFile{}, fmt.Errorf("lock: %w", err)
	}
	pkgs, err := toolchainPackages(arg, data)
	if err != nil {
		return pinFile{}, withHint(err, "kiln lock --pins takes recipe directories and toolchain files (recipes/toolchains/NAME.toml)")
	}
	return pinFile{arg, pkgs, toolchainPackages, false}, nil
}

// loadPinFiles loads every argument with loadPinFile.
func loadPinFiles(args []string) ([]pinFile, error) {
	var files []pinFile
	for _, a := range args {
		pf, err := loadPinFile(a)
		if err != nil {
			return nil, err
		}
		files = append(files, pf)
	}
	return files, nil
}

// runPins is kiln lock --pins: every deb: pin of the files given gets the
// snapshot archive's copy of its version as a fallback source; with
// --update, each moves to the version apt would install today.
func runPins(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("lock --pins: want RECIPE_DIR or TOOLCHAIN.toml arguments (see kiln lock --help)")
	}
	files, err := loadPinFiles(c.Args().Slice())
	if err != nil {
		return err
	}
	return maintainPins(c, files)
}

// maintainPins gives every deb: pin of files its fallback source (with
// --update: moves it), for runPins and for plain kiln lock.
func maintainPins(c *cli.Context, files []pinFile) error {
	e := envOf(c)
	update := c.Bool("update")
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	f := &fetch.Fetcher{Store: st, Log: e.kilnLine}
	rep := pinsReport{Changes: []pinChange{}, Written: []string{}}
	var gone, bad []string
	for _, pf := range files {
		var edits []recipes.PinEdit
		for _, in := range pf.inputs {
			src, ok := in.DebPin()
			if !ok {
				continue
			}
			d, _ := recipes.ParseDebSource(src)
			ch := pinChange{File: pf.path, Input: in.Name, Package: d.Name, Old: d.Version, OldSHA256: in.SHA256}
			if d.Arch != "" {
				ch.Package += ":" + d.Arch
			}
			p, err := f.ResolvePin(c.Context, src, update)
			if errors.Is(err, fetch.ErrNotInArchive) {
				ch.Kind = "gone"
				rep.Changes = append(rep.Changes, ch)
				gone = append(gone, ch.Package+"="+d.Version)
				continue
			}
			if err != nil {
				return withHint(err, "check the network; the pin's architecture, suites and components come from the host's apt sources")
			}
			if p.Version == d.Version && p.SHA256 != in.SHA256 {
				bad = append(bad, fmt.Sprintf("%s %s: the archive's sha256 is %s, %s pins %s", ch.Package, d.Version, p.SHA256, pf.path, in.SHA256))
				continue
			}
			sources := recipes.PinnedSources(in.Sources, p.Source, p.Snapshot)
			if p.Version == d.Version && strings.Join(sources, "\n") == strings.Join(in.Sources, "\n") {
				continue
			}
			ch.Snapshot = p.Snapshot
			switch c := debian.CompareVersions(p.Version, d.Version); {
			case c > 0:
				ch.Kind, ch.New, ch.NewSHA256 = "upgraded", p.Version, p.SHA256
			case c < 0:
				ch.Kind, ch.New, ch.NewSHA256 = "downgraded", p.Version, p.SHA256
			default:
				ch.Kind = "fallback"
			}
			rep.Changes = append(rep.Changes, ch)
			edits = append(edits, recipes.PinEdit{Old: src, OldSHA256: in.SHA256, Sources: sources, SHA256: p.SHA256})
		}
		if len(edits) == 0 {
			continue
		}
		if err := rewritePinFile(pf, edits); err != nil {
			return withHint(err, pf.path+" was left as it was: move the pin by hand (its sources array on one line, then its sha256 line)")
		}
		rep.Written = append(rep.Written, pf.path)
	}
	if c.Bool("json") {
		if err := e.printJSON(rep); err != nil {
			return err
		}
	} else {
		for _, ch := range rep.Changes {
			fmt.Fprintln(e.stdout, ch.String())
		}
		for _, w := range rep.Written {
			fmt.Fprintf(e.stdout, "%s written\n", w)
		}
		if len(rep.Written) == 0 && len(gone)+len(bad) == 0 {
			fmt.Fprintln(e.stdout, "every deb: pin is current and has its snapshot fallback")
		}
	}
	switch {
	case len(bad) > 0:
		return withHint(fmt.Errorf("lock: %w: %s", recipes.ErrHashMismatch, strings.Join(bad, "; ")),
			"the archive serves other bytes under the pinned version: check the archive before trusting it; nothing was changed for these pins")
	case len(gone) > 0 && update:
		return withHint(fmt.Errorf("lock: %s: %w (the package itself is gone)", strings.Join(gone, ", "), fetch.ErrNotInArchive),
			"a renamed package (a new kernel ABI such as linux-image-6.1.0-NN-arm64) needs the recipe edited by hand: the new name and every path that names it")
	case len(gone) > 0:
		return withHint(fmt.Errorf("lock: %s: pinned version %w", strings.Join(gone, ", "), fetch.ErrNotInArchive),
			"kiln lock --pins --update "+strings.Join(c.Args().Slice(), " ")+" moves each pin to the archive's current version")
	}
	return nil
}

// rewritePinFile applies edits to a pin file and replaces it atomically,
// only once the new text parses as the same kind of file and holds exactly
// the pins intended: the edited inputs with their new sources and sha256,
// every other input as it was. On any failure the file is untouched.
func rewritePinFile(pf pinFile, edits []recipes.PinEdit) error {
	data, err := os.ReadFile(pf.path)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	before, err := pf.parse(pf.path, data)
	if err != nil || !sameInputs(before, pf.inputs) {
		return fmt.Errorf("lock: %s: %w: the file changed while its pins were resolved", pf.path, recipes.ErrRewrite)
	}
	out, err := recipes.RewritePins(pf.path, data, edits)
	if err != nil {
		return err
	}
	after, err := pf.parse(pf.path, out)
	if err != nil {
		return fmt.Errorf("lock: %w: the rewritten text does not parse: %w", recipes.ErrRewrite, err)
	}
	want := pinsMoved(before, edits)
	if len(after) != len(want) {
		return fmt.Errorf("lock: %s: %w: the rewritten text has %d inputs, not %d", pf.path, recipes.ErrRewrite, len(after), len(want))
	}
	for i := range want {
		if !sameInputs(after[i:i+1], want[i:i+1]) {
			return fmt.Errorf("lock: %s: %w: the rewritten text gives %s sources %q and sha256 %s, not sources %q and sha256 %s",
				pf.path, recipes.ErrRewrite, want[i].Name, after[i].Sources, after[i].SHA256, want[i].Sources, want[i].SHA256)
		}
	}
	fi, err := os.Stat(pf.path)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if err := writeAtomic(pf.path, out, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

// pinsMoved returns inputs with edits applied: the input whose deb: pin is
// an edit's Old and whose sha256 its OldSHA256 gets its Sources and SHA256.
func pinsMoved(inputs []recipes.Input, edits []recipes.PinEdit) []recipes.Input {
	out := append([]recipes.Input(nil), inputs...)
	for i, in := range out {
		pin, _ := in.DebPin()
		for _, e := range edits {
			if pin == e.Old && in.SHA256 == e.OldSHA256 {
				out[i].Sources, out[i].SHA256 = e.Sources, e.SHA256
			}
		}
	}
	return out
}

// sameInputs reports whether two input lists are equal in every field a
// recipe file sets (Dir is where it was loaded from).
func sameInputs(a, b []recipes.Input) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !slices.Equal(x.Sources, y.Sources) {
			return false
		}
		x.Sources, y.Sources, x.Dir, y.Dir = nil, nil, "", ""
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

package cli

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "hash",
		Usage:     "print a recipe's derivation hash (no network, no build)",
		ArgsUsage: "RECIPE_DIR",
		Description: "The derivation hash is the sha256 of the recipe's canonical derivation: its fields, the\n" +
			"board definition, the toolchain closure's hashes, every input's hash and every source file's\n" +
			"path and hash. Where inputs are fetched from and where the recipe lives do not change it.",
		Flags: []cli.Flag{jsonFlag,
			&cli.BoolFlag{Name: "canonical", Usage: "print the canonical derivation JSON that is hashed"}},
		Action: runHash,
	})
}

// hashReport is what kiln hash --json prints.
type hashReport struct {
	Derivation    string               `json:"derivation"`
	Name          string               `json:"name"`
	Version       string               `json:"version"`
	Kind          string               `json:"kind"`
	Board         string               `json:"board"`
	Toolchain     string               `json:"toolchain,omitempty"`
	ToolchainHash string               `json:"toolchain_hash,omitempty"`
	Inputs        []recipes.InputPin   `json:"inputs"`
	Sources       []recipes.SourceFile `json:"sources"`
}

func runHash(c *cli.Context) error {
	if err := argN(c, 1, "RECIPE_DIR"); err != nil {
		return err
	}
	e := envOf(c)
	d, err := derive(c.Args().First())
	if err != nil {
		return err
	}
	switch {
	case c.Bool("canonical"):
		_, err := fmt.Fprintf(e.stdout, "%s\n", d.JSON())
		return err
	case c.Bool("json"):
		rep := hashReport{Derivation: d.Hash(), Name: d.Name, Version: d.Version, Kind: d.Kind,
			Board: d.Board.Name, ToolchainHash: d.ToolchainHash,
			Inputs: append([]recipes.InputPin{}, d.Inputs...), Sources: d.SourceFiles()}
		if d.Toolchain != nil {
			rep.Toolchain = d.Toolchain.Name
		}
		return e.printJSON(rep)
	}
	_, err = fmt.Fprintln(e.stdout, d.Hash())
	return err
}

// derive loads a recipe and computes its derivation, with hints for the
// usual mistakes.
func derive(dir string) (*recipes.Derivation, error) {
	r, err := recipes.Load(dir)
	if err != nil {
		return nil, recipeHint(err)
	}
	d, err := r.Derive()
	if err != nil {
		return nil, recipeHint(err)
	}
	return d, nil
}

func recipeHint(err error) error {
	switch {
	case errors.Is(err, boards.ErrUnknown):
		return withHint(err, "kiln boards lists the boards kiln knows")
	case errors.Is(err, recipes.ErrUnknownToolchain):
		return withHint(err, "toolchain closures are data: recipes/toolchains/<name>.toml in kiln's source")
	case errors.Is(err, recipes.ErrNoLock):
		return withHint(err, "run kiln lock RECIPE_DIR: it resolves [image.rootfs] into rootfs.lock")
	case errors.Is(err, recipes.ErrNoMatch):
		return withHint(err, "source globs are relative to the recipe directory")
	}
	return err
}

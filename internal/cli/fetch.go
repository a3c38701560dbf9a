package cli

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// storeFlag is --store for every command that uses the store.
var storeFlag = &cli.StringFlag{Name: "store", Usage: "store `DIR` (default $KILN_STORE or ~/.cache/kiln/store)"}

func init() {
	register(&cli.Command{
		Name:      "fetch",
		Usage:     "fetch a recipe's toolchain and inputs into the store",
		ArgsUsage: "RECIPE_DIR",
		Description: "Each input is fetched from its sources in order (deb: through apt-get download, https:,\n" +
			"file:) and enters the store only if its sha256 matches the recipe. Progress goes to stderr;\n" +
			"the store paths to stdout.",
		Flags:  []cli.Flag{jsonFlag, storeFlag, substituterFlag, policyFlag},
		Action: runFetch,
	})
}

type fetchedPath struct {
	Kind string `json:"kind"` // "toolchain" or "input"
	Name string `json:"name"`
	Path string `json:"path"`
}

func runFetch(c *cli.Context) error {
	if err := argN(c, 1, "RECIPE_DIR"); err != nil {
		return err
	}
	e := envOf(c)
	d, err := derive(c.Args().First())
	if err != nil {
		return err
	}
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	sub, err := newSubstitution(c, st)
	if err != nil {
		return err
	}
	f := &fetch.Fetcher{Store: st, HTTP: http.DefaultClient, Substitute: sub.hook(),
		Log: e.kilnLine}
	// Inputs first: they are small, and a wrong pin fails before the
	// toolchain's hundreds of megabytes are fetched.
	var got []fetchedPath
	for _, in := range d.Recipe().Inputs {
		p, err := f.Input(c.Context, in)
		if err != nil {
			return fetchHint(err)
		}
		got = append(got, fetchedPath{"input", in.Name, p})
	}
	// A Debian root: every locked .deb, kept whole for assembly.
	if spec, ok := d.Recipe().KindData.(*recipes.ImageSpec); ok && spec.Rootfs != nil {
		l, err := spec.Rootfs.Lock(d.Recipe().Dir)
		if err != nil {
			return recipeHint(err)
		}
		ins, err := recipes.LockInputs(l, debian.SnapshotBase)
		if err != nil {
			return err
		}
		if err := f.PrefetchDebs(c.Context, ins); err != nil {
			return fetchHint(err)
		}
		for _, in := range ins {
			p, err := f.DebFile(c.Context, in)
			if err != nil {
				return fetchHint(err)
			}
			got = append(got, fetchedPath{"deb", in.Name, p})
		}
	}
	if tc := d.ToolchainDef(); tc != nil {
		p, err := f.Toolchain(c.Context, tc)
		if err != nil {
			return fetchHint(err)
		}
		got = append([]fetchedPath{{"toolchain", tc.Name, p}}, got...)
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"derivation": d.Hash(), "store": st.Root, "fetched": got})
	}
	for _, g := range got {
		fmt.Fprintf(e.stdout, "%s\t%s\t%s\n", g.Kind, g.Name, g.Path)
	}
	return nil
}

func fetchHint(err error) error {
	switch {
	case errors.Is(err, recipes.ErrHashMismatch):
		return withHint(err, "a source served content other than the recipe pins; nothing was added to the store",
			"if the new content is trusted, update the input's sha256 in the recipe")
	case errors.Is(err, fetch.ErrGone):
		return withHint(err, "move the pin to a version the archive has: kiln lock --pins --update RECIPE_DIR (a toolchain: recipes/toolchains/NAME.toml); a root filesystem: kiln lock --update RECIPE_DIR")
	case errors.Is(err, fetch.ErrPartlyGone):
		return withHint(err, "the main archive no longer has the pinned version and its fallback could not be reached: check the network (the snapshot archive keeps every version)",
			"or move the pin to a version the archive has: kiln lock --pins --update RECIPE_DIR (a toolchain: recipes/toolchains/NAME.toml); a root filesystem: kiln lock --update RECIPE_DIR")
	case errors.Is(err, fetch.ErrAPT):
		return withHint(err, "check the network, then run apt-get update (the package index may be stale) and apt-cache policy NAME (is the pinned version still there?)")
	}
	return err
}

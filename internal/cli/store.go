package cli

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/cache"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:  "store",
		Usage: "list, verify and garbage-collect the store",
		Subcommands: []*cli.Command{
			{
				Name:   "ls",
				Usage:  "list the store's entries",
				Flags:  []cli.Flag{jsonFlag, storeFlag},
				Action: runStoreLs,
			},
			{
				Name:      "verify",
				Usage:     "re-hash entries against their manifests (all, or the ones named)",
				ArgsUsage: "[ENTRY...]",
				Description: "Exits 1 and names every tampered entry: a changed, removed or added file, a changed\n" +
					"mode or symlink target. ENTRY is an entry's directory name or path.",
				Flags: []cli.Flag{jsonFlag, storeFlag,
					&cli.StringFlag{Name: "cache", Usage: "check every record and object of the binary cache at `URL` instead (cache.go)"},
					policyFlag},
				Action: runStoreVerify,
			},
			storePushCommand,
			{
				Name:  "gc",
				Usage: "remove leftovers of interrupted writes, and entries no kept recipe uses",
				Description: "gc always removes the temporary directories of writes whose process is gone. With\n" +
					"--keep RECIPE_DIR (repeatable) it also removes every entry that none of those recipes\n" +
					"uses (its toolchain, its inputs, its build output, matched by hash); with --all and no\n" +
					"--keep it removes every entry. An entry a running kiln store push is uploading is kept.\n" +
					"--dry-run lists what would go.",
				Flags: []cli.Flag{jsonFlag, storeFlag,
					&cli.StringSliceFlag{Name: "keep", Usage: "keep what this recipe uses (repeatable)"},
					&cli.BoolFlag{Name: "all", Usage: "with no --keep: remove every entry"},
					&cli.BoolFlag{Name: "dry-run", Usage: "list what would be removed"}},
				Action: runStoreGC,
			},
		},
	})
}

func runStoreLs(c *cli.Context) error {
	e := envOf(c)
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	list, err := st.List()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"store": st.Root, "entries": nonNil(list)})
	}
	for _, en := range list {
		fmt.Fprintf(e.stdout, "%s\t%s\t%s\n", en.Hash, en.Name, en.Path)
	}
	return nil
}

func nonNil(l []store.Entry) []store.Entry {
	if l == nil {
		return []store.Entry{}
	}
	return l
}

type verifyResult struct {
	Entry string `json:"entry"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func runStoreVerify(c *cli.Context) error {
	if u := c.String("cache"); u != "" {
		return runCacheVerify(c, u)
	}
	e := envOf(c)
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	var paths []string
	if c.NArg() == 0 {
		list, err := st.List()
		if err != nil {
			return err
		}
		for _, en := range list {
			paths = append(paths, en.Path)
		}
	}
	for _, a := range c.Args().Slice() {
		if !strings.ContainsRune(a, filepath.Separator) {
			a = filepath.Join(st.Root, a)
		}
		paths = append(paths, a)
	}
	var results []verifyResult
	var bad []string
	for _, p := range paths {
		r := verifyResult{Entry: filepath.Base(p), OK: true}
		if err := st.Verify(p); err != nil {
			r.OK, r.Error = false, err.Error()
			bad = append(bad, r.Entry)
		}
		results = append(results, r)
	}
	if c.Bool("json") {
		if err := e.printJSON(map[string]any{"store": st.Root, "entries": results}); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			if r.OK {
				fmt.Fprintf(e.stdout, "ok\t%s\n", r.Entry)
			} else {
				fmt.Fprintf(e.stdout, "TAMPERED\t%s\t%s\n", r.Entry, r.Error)
			}
		}
	}
	if len(bad) > 0 {
		return withHint(fmt.Errorf("store verify: %w: %d of %d entries: %s", store.ErrTampered, len(bad), len(results), strings.Join(bad, ", ")),
			"remove a tampered entry with kiln store gc or rm -rf; the next fetch or build remakes it")
	}
	return nil
}

func runStoreGC(c *cli.Context) error {
	e := envOf(c)
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	keepDirs := c.StringSlice("keep")
	if len(keepDirs) > 0 && c.Bool("all") {
		return usagef("store gc: --all and --keep exclude each other")
	}
	keep := map[string]bool{}
	for _, dir := range keepDirs {
		d, err := derive(dir)
		if err != nil {
			return err
		}
		for _, h := range usedHashes(d) {
			keep[h[:32]] = true
		}
	}
	pruneEntries := len(keepDirs) > 0 || c.Bool("all")
	pushing := cache.Referenced(st) // entries a running kiln store push is uploading
	keepFn := func(en store.Entry) bool {
		return !pruneEntries || keep[en.Hash] || pushing[filepath.Base(en.Path)]
	}
	var removed []store.Entry
	if c.Bool("dry-run") {
		list, err := st.List()
		if err != nil {
			return err
		}
		for _, en := range list {
			if !keepFn(en) {
				removed = append(removed, en)
			}
		}
	} else if removed, err = st.GC(keepFn); err != nil {
		return err
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"store": st.Root, "removed": nonNil(removed), "dry_run": c.Bool("dry-run")})
	}
	verb := "removed"
	if c.Bool("dry-run") {
		verb = "would remove"
	}
	for _, en := range removed {
		fmt.Fprintf(e.stdout, "%s\t%s-%s\n", verb, en.Hash, en.Name)
	}
	if !pruneEntries {
		fmt.Fprintln(e.stderr, "kiln: store gc: removed leftovers only; give --keep RECIPE_DIR (or --all) to remove entries")
	}
	return nil
}

// usedHashes are the store keys a recipe's build uses: its output
// (derivation hash), its toolchain and its inputs.
func usedHashes(d *recipes.Derivation) []string {
	hs := []string{d.Hash()}
	if d.ToolchainHash != "" {
		hs = append(hs, d.ToolchainHash)
	}
	for _, in := range d.Inputs {
		hs = append(hs, in.StoreKey())
	}
	return hs
}

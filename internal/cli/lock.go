package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "lock",
		Usage:     "resolve an image recipe's Debian packages into rootfs.lock",
		ArgsUsage: "RECIPE_DIR | [--pins] RECIPE_DIR|TOOLCHAIN.toml...",
		Description: "apt's own resolver, run for the root's architecture with apt state of its own (the host's\n" +
			"dpkg and apt are untouched), resolves the closure of [image.rootfs] and kiln writes it to\n" +
			"rootfs.lock beside recipe.toml: every package's name, version, architecture, sha256, size,\n" +
			"source package and pool path, in apt's install order, with the resolution time and the\n" +
			"snapshot time (the newest Release file's Date + 12 h: the snapshot archive's fallback copy\n" +
			"of each .deb is derived from it). A lock that still matches\n" +
			"the recipe is kept; --update resolves again against today's archive. Changes are printed\n" +
			"(added, removed, upgraded, with versions). kiln build reads only the lock.\n\n" +
			"--pins maintains the deb: pins of recipes' inputs and toolchain closures (recipes/toolchains/\n" +
			"NAME.toml), as kiln lock does without it when no argument is an image recipe with\n" +
			"[image.rootfs]: each pin gets, after its deb: source, the snapshot archive's URL of the same file\n" +
			"(pool path from apt, time = the newest Release file's Date + 12 h), the durable fallback\n" +
			"once Debian's main archive drops the version. With --update each pin moves to the version\n" +
			"apt would install today (old -> new version and sha256 printed); the file is rewritten in\n" +
			"place, comments kept. apt runs with state of its own (the host's is untouched), its sources\n" +
			"taken from /etc/apt (or $KILN_APT_SOURCES, a directory laid out like it).",
		Flags: []cli.Flag{jsonFlag, storeFlag,
			&cli.BoolFlag{Name: "update", Usage: "resolve again even if the lock matches the recipe (with --pins: move each pin to today's version)"},
			&cli.BoolFlag{Name: "pins", Usage: "maintain the deb: pins of recipe directories and toolchain files instead of rootfs.lock"}},
		Action: runLock,
	})
}

type lockReport struct {
	Lock     string          `json:"lock"`
	Written  bool            `json:"written"`
	Resolved string          `json:"resolved"`
	Packages int             `json:"packages"`
	Changes  []debian.Change `json:"changes"`
}

func runLock(c *cli.Context) error {
	if c.Bool("pins") {
		return runPins(c)
	}
	// No argument an image recipe with [image.rootfs] (firmware recipes,
	// toolchain files): kiln lock [--update] maintains their deb: pins, as
	// --pins does, so one command moves any pin. What does not load goes
	// to the rootfs path, which reports it.
	if files, err := loadPinFiles(c.Args().Slice()); err == nil && len(files) > 0 &&
		!slices.ContainsFunc(files, func(f pinFile) bool { return f.rootfs }) {
		return maintainPins(c, files)
	}
	if err := argN(c, 1, "RECIPE_DIR"); err != nil {
		return err
	}
	e := envOf(c)
	r, err := recipes.Load(c.Args().First())
	if err != nil {
		return recipeHint(err)
	}
	spec, ok := r.KindData.(*recipes.ImageSpec)
	if !ok || spec.Rootfs == nil {
		return withHint(fmt.Errorf("lock: %s: no [image.rootfs] table: nothing to lock", r.File),
			"an image recipe declares Debian packages in [image.rootfs] (arch, suites, components, packages)")
	}
	req := spec.Rootfs.Request()
	old, err := spec.Rootfs.Lock(r.Dir)
	switch {
	case err == nil && !c.Bool("update"):
		return printLock(e, c.Bool("json"), lockReport{Lock: recipes.LockPath(r.Dir), Resolved: old.Resolved.Format("2006-01-02T15:04:05Z"),
			Packages: len(old.Packages), Changes: []debian.Change{}})
	case err != nil && !errors.Is(err, recipes.ErrNoLock) && !errors.Is(err, debian.ErrLock):
		return err
	case err != nil && errors.Is(err, debian.ErrLock) && !c.Bool("update"):
		return withHint(err, "fix or delete rootfs.lock, or run kiln lock --update to resolve it again")
	}
	if errors.Is(err, fs.ErrNotExist) {
		old = nil
	} else if old == nil {
		// A stale lock: still the base of the change list.
		if data, rerr := os.ReadFile(recipes.LockPath(r.Dir)); rerr == nil {
			old, _ = debian.ParseLock(data)
		}
	}
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	res := &debian.Resolver{Dir: filepath.Join(st.Root, ".apt-lock"),
		Log: e.kilnLine}
	l, err := res.Resolve(c.Context, req)
	if err != nil {
		return lockHint(err, req)
	}
	changes := debian.Diff(old, l)
	if old != nil && len(changes) == 0 && old.RequestHash == l.RequestHash {
		// Nothing moved: keep the old resolution time, so the file and
		// its snapshot fallbacks stay as they were.
		l.Resolved, l.Snapshot = old.Resolved, old.Snapshot
	}
	if err := debian.WriteLock(r.Dir, l); err != nil {
		return err
	}
	if changes == nil {
		changes = []debian.Change{}
	}
	return printLock(e, c.Bool("json"), lockReport{Lock: recipes.LockPath(r.Dir), Written: true,
		Resolved: l.Resolved.Format("2006-01-02T15:04:05Z"), Packages: len(l.Packages), Changes: changes})
}

func printLock(e *env, asJSON bool, rep lockReport) error {
	if asJSON {
		return e.printJSON(rep)
	}
	for _, ch := range rep.Changes {
		fmt.Fprintln(e.stdout, ch.String())
	}
	verb := "up to date"
	if rep.Written {
		verb = "written"
	}
	_, err := fmt.Fprintf(e.stdout, "%s %s: %d packages, resolved %s\n", rep.Lock, verb, rep.Packages, rep.Resolved)
	return err
}

func lockHint(err error, req debian.Request) error {
	switch {
	case errors.Is(err, debian.ErrNoPackage):
		return withHint(err, fmt.Sprintf("check the name in [image.rootfs] packages: is it in %v %v for %s?", req.Suites, req.Components, req.Arch))
	case errors.Is(err, debian.ErrUnsatisfiable):
		return withHint(err, "apt's explanation is above: drop or replace the package, or add the suite that has what it needs")
	case errors.Is(err, debian.ErrNoSuite):
		return withHint(err, "kiln takes each suite's mirror from the host's apt sources unless [image.rootfs] sets mirror")
	case errors.Is(err, debian.ErrAPT):
		return withHint(err, "check the network and the mirror; apt's own messages are above")
	}
	return err
}

package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/firmware/arduino/libindex"
	"kiln.dev/kiln/firmware/arduino/sketchinit"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "init",
		Usage:     "write a pinned recipe for an Arduino sketch (core, board, libraries resolved from an index)",
		ArgsUsage: "SKETCH_DIR",
		Description: "kiln init writes SKETCH_DIR/recipe.toml (kind \"arduino\"): Debian's arduino-core-avr, the board,\n" +
			"and the libraries the sketch asks for — named with --library, and those its #includes need —\n" +
			"resolved with their dependencies from an Arduino library index, each pinned by sha256 and\n" +
			"fetched into the store, so that kiln build SKETCH_DIR then needs no network.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "board", Required: true, Usage: "the kiln `BOARD` (see kiln boards)"},
			&cli.StringSliceFlag{Name: "library", Usage: "a library to pin, `NAME[@VERSION]` (repeatable)"},
			&cli.StringFlag{Name: "index", Usage: "library index `URL` (https:// or file:)", Value: sketchinit.DefaultIndex},
			&cli.BoolFlag{Name: "update", Usage: "re-resolve an existing recipe"},
			&cli.StringFlag{Name: "store", Usage: "store `DIR` (default $KILN_STORE or ~/.cache/kiln/store)"},
			jsonFlag,
		},
		Action: runInit,
	})
}

func runInit(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("init: want SKETCH_DIR (see kiln init --help)")
	}
	e := envOf(c)
	s, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	res, err := sketchinit.Init(c.Context, sketchinit.Options{
		Sketch: args[0], Board: c.String("board"), Libraries: c.StringSlice("library"),
		Index: c.String("index"), Update: c.Bool("update"), Store: s,
	})
	if err != nil {
		return initHints(err, c.String("index"))
	}
	if c.Bool("json") {
		return e.printJSON(res)
	}
	fmt.Fprintf(e.stdout, "wrote %s\n", res.Recipe)
	fmt.Fprintf(e.stdout, "core     %s  %s\n", strings.Join(res.Core.Sources, " "), res.Core.SHA256)
	for _, l := range res.Libraries {
		fmt.Fprintf(e.stdout, "library  %s %s  %s  (%s)\n", l.Name, l.Version, l.SHA256, l.Why)
	}
	return nil
}

func initHints(err error, index string) error {
	var me *sketchinit.MissingError
	switch {
	case errors.As(err, &me):
		if len(me.Similar) > 0 {
			return withHint(err, "the index has libraries named like it: "+strings.Join(me.Similar, ", ")+"; name one with --library NAME")
		}
		return withHint(err, "no library in "+index+" declares "+me.Header+" (providesIncludes); name the library with --library NAME, or put the header in the sketch")
	case errors.Is(err, sketchinit.ErrExists):
		return withHint(err, "kiln init --update re-resolves it; or edit it by hand")
	case errors.Is(err, recipes.ErrHashMismatch):
		return withHint(err, "the archive the index names does not have the checksum the index gives: nothing was added to the store; check the index and the mirror")
	case errors.Is(err, libindex.ErrNotFound), errors.Is(err, libindex.ErrUnresolvable):
		return withHint(err, "names are the index's (\"Adafruit BMP280 Library\"), versions exact (--library Servo@1.3.0)")
	case errors.Is(err, fetch.ErrNoSource):
		return withHint(err, "kiln init needs the network (or a file: index); kiln build afterwards does not")
	}
	return err
}

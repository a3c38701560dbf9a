package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/sim"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "run",
		Usage:     "run firmware on a simulated board (simavr for AVR, QEMU for Cortex-M)",
		ArgsUsage: "ARTIFACT|RECIPE_DIR",
		Description: "Loads the exact flash image (a build output directory, .hex, .elf, .bin with --address, " +
			"or a recipe, built first through the store) into the board's simulator and runs it for --for " +
			"of simulated time (default: until interrupted, paced to real time). The console UART's bytes go " +
			"to stdout; --input feeds its receive line. Pin changes (--pins) and a summary with the ratio of " +
			"simulated to wall-clock time go to stderr.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "board", Usage: "board `B` (default: the one the recipe or build manifest names)"},
			&cli.StringFlag{Name: "for", Usage: "simulated `DURATION` to run (e.g. 5s, 250ms)"},
			&cli.StringFlag{Name: "input", Usage: "send `FILE` (- for stdin) to the UART's receive line"},
			&cli.StringFlag{Name: "input-at", Usage: "start sending the input at simulated time `DURATION`"},
			&cli.StringFlag{Name: "vcd", Usage: "write a value-change dump of the pins and the UART to `FILE`"},
			&cli.StringFlag{Name: "pins", Usage: "comma-separated port pins to watch (`LIST`, e.g. PB5,PD2)"},
			&cli.StringFlag{Name: "with-bootloader", Usage: "flash the bootloader `HEX` too and start in it after an external reset"},
			&cli.BoolFlag{Name: "realtime", Usage: "pace the simulation to the wall clock (the default without --for)"},
			&cli.StringFlag{Name: "address", Usage: "load address of a .bin (`ADDR`)"},
			storeFlag,
			jsonFlag,
		},
		Action: runRun,
	})
}

// runOpts is what kiln run was asked.
type runOpts struct {
	target, board, input, vcd, bootloader, store string
	forDur, inputAt                              time.Duration
	pins                                         []string
	address                                      *uint32
	realtime, json                               bool
}

func runRun(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("run: want one ARTIFACT or RECIPE_DIR (see kiln run --help)")
	}
	o := runOpts{target: args[0], board: c.String("board"), input: c.String("input"), vcd: c.String("vcd"),
		bootloader: c.String("with-bootloader"), store: c.String("store"), realtime: c.Bool("realtime"), json: c.Bool("json")}
	if o.forDur, err = parseDuration("for", c.String("for")); err != nil {
		return err
	}
	if o.inputAt, err = parseDuration("input-at", c.String("input-at")); err != nil {
		return err
	}
	if o.forDur == 0 {
		o.realtime = true
	}
	if p := c.String("pins"); p != "" {
		for _, s := range strings.Split(p, ",") {
			o.pins = append(o.pins, strings.ToUpper(strings.TrimSpace(s)))
		}
	}
	if a := c.String("address"); a != "" {
		v, err := strconv.ParseUint(a, 0, 32)
		if err != nil {
			return usagef("run: --address %q: want a number such as 0x08000000", a)
		}
		a32 := uint32(v)
		o.address = &a32
	}
	return runFirmware(c.Context, o, envOf(c))
}

// parseDuration reads a flag's simulated duration ("" is 0).
func parseDuration(flag, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, usagef("--%s %q: want a duration such as 5s or 250ms", flag, s)
	}
	return d, nil
}

// loadTarget resolves ARTIFACT|RECIPE_DIR into an artifact and its board:
// a recipe is built (or found) in the store first.
func loadTarget(ctx context.Context, target, boardName, storeDir string, address *uint32, stderr io.Writer) (*sim.Artifact, *boards.Board, error) {
	var a *sim.Artifact
	if r, err := recipes.Load(target); err == nil {
		st, err := store.Open(storeDir)
		if err != nil {
			return nil, nil, err
		}
		art, res, err := sim.FromRecipe(ctx, target, st)
		if err != nil {
			return nil, nil, buildHints(err)
		}
		how := "built"
		if res.Hit {
			how = "store hit"
		}
		fmt.Fprintf(stderr, "kiln: %s %s (%s): %s\n", r.Name, r.Version, how, res.StorePath)
		a = art
	} else if _, statErr := os.Stat(recipesFile(target)); statErr == nil {
		return nil, nil, err // a recipe directory whose recipe does not load
	} else {
		if a, err = sim.LoadArtifact(target, address); err != nil {
			hints := []string{"kiln run takes a build output directory, a .hex, .elf or .bin (with --address), or a recipe directory"}
			if errors.Is(err, sim.ErrNoLoadable) {
				hints = []string{"link the program for flash (check the linker script's MEMORY and SECTIONS)"}
			}
			return nil, nil, withHint(err, hints...)
		}
	}
	name := boardName
	if name == "" {
		name = a.Board
	}
	if name == "" {
		return nil, nil, withHint(usagef("run: %s does not say which board it is for: give --board", target),
			"kiln boards lists the boards kiln knows")
	}
	b, err := boards.Get(name)
	if err != nil {
		return nil, nil, withHint(err, "kiln boards lists the boards kiln knows")
	}
	return a, b, nil
}

func recipesFile(dir string) string { return strings.TrimSuffix(dir, "/") + "/" + recipes.FileName }

func runFirmware(ctx context.Context, o runOpts, e *env) error {
	a, b, err := loadTarget(ctx, o.target, o.board, o.store, o.address, e.stderr)
	if err != nil {
		return err
	}
	opts := sim.Options{Board: b, Artifact: a, For: o.forDur, Realtime: o.realtime, Pins: o.pins, InputAt: o.inputAt}
	if o.bootloader != "" {
		if opts.Bootloader, err = flash.Load(o.bootloader, flash.LoadOptions{}); err != nil {
			return fmt.Errorf("run: --with-bootloader: %w", err)
		}
	}
	switch o.input {
	case "":
	case "-":
		opts.Input = e.stdin
	default:
		f, err := os.Open(o.input)
		if err != nil {
			return fmt.Errorf("run: --input: %w", err)
		}
		defer f.Close()
		opts.Input = f
	}
	if !o.json {
		opts.UART = e.stdout
		opts.Pin = func(pc sim.PinChange) { fmt.Fprintf(e.stderr, "%s\n", pinLine(pc)) }
	}
	res, err := sim.Run(ctx, opts)
	if err != nil {
		return runHints(err, b)
	}
	if o.vcd != "" {
		if err := writeVCD(o.vcd, res, o.pins); err != nil {
			return err
		}
	}
	if o.json {
		return e.printJSON(runJSON(a, res))
	}
	fmt.Fprintf(e.stderr, "kiln: ran %s (sha256 %s) on %s: %v simulated in %v wall (%.2fx real time; %s)\n",
		a.Path, a.SHA256, res.Engine, res.Simulated, res.Wall.Round(time.Millisecond), res.Ratio(), res.Clock)
	if res.AppAt >= 0 {
		fmt.Fprintf(e.stderr, "kiln: the bootloader started the application at %v\n", res.AppAt)
	}
	if res.Overruns > 0 {
		fmt.Fprintf(e.stderr, "kiln: %d received bytes lost (the firmware did not read them in time)\n", res.Overruns)
	}
	if res.Halted != "" {
		if strings.HasPrefix(res.Halted, "crashed") {
			return fmt.Errorf("run: the core %s", res.Halted)
		}
		fmt.Fprintf(e.stderr, "kiln: the core stopped: %s\n", res.Halted)
	}
	return nil
}

// pinLine is one --pins line: simulated time, pin, level.
func pinLine(pc sim.PinChange) string {
	return fmt.Sprintf("%14.6f ms  %s %d", float64(pc.At.Nanoseconds())/1e6, pc.Pin, pc.Level)
}

func writeVCD(path string, res *sim.Result, pins []string) error {
	f, err := os.CreateTemp(dirOf(path), ".vcd-")
	if err != nil {
		return fmt.Errorf("run: --vcd: %w", err)
	}
	defer os.Remove(f.Name())
	if err := sim.WriteVCD(f, res, pins); err != nil {
		f.Close()
		return fmt.Errorf("run: --vcd: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("run: --vcd: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("run: --vcd: %w", err)
	}
	return os.Rename(f.Name(), path)
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i+1]
	}
	return "."
}

func runJSON(a *sim.Artifact, res *sim.Result) map[string]any {
	pins := []map[string]any{}
	for _, p := range res.Pins {
		pins = append(pins, map[string]any{"ns": p.At.Nanoseconds(), "pin": p.Pin, "level": p.Level})
	}
	return map[string]any{
		"artifact": a.Path, "sha256": a.SHA256, "image_sha256": res.ImageSHA256, "board": res.Board,
		"engine": res.Engine, "clock": res.Clock, "simulated_ns": res.Simulated.Nanoseconds(),
		"wall_ns": res.Wall.Nanoseconds(), "ratio": res.Ratio(), "uart": string(res.UART), "pins": pins,
		"app_ns": res.AppAt.Nanoseconds(), "halted": res.Halted, "overruns": res.Overruns,
	}
}

// runHints says what to do about a refused run.
func runHints(err error, b *boards.Board) error {
	switch {
	case errors.Is(err, sim.ErrNoModel):
		return withHint(err, "boards with a simulator: "+strings.Join(simBoards(), ", "))
	case errors.Is(err, sim.ErrWrongBoard), errors.Is(err, flash.ErrBadImage):
		return withHint(err, fmt.Sprintf("give the --board the firmware was built for, or build the recipe for %s", b.Name))
	case errors.Is(err, sim.ErrUnsupported) && b.Sim != nil:
		return withHint(err, b.Sim.Limits...)
	}
	return err
}

func simBoards() []string {
	var names []string
	all, _ := boards.All()
	for _, b := range all {
		if b.Sim != nil {
			names = append(names, b.Name)
		}
	}
	return names
}

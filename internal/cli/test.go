package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/internal/sim"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "test",
		Usage:     "run recipes' [[test]] sections on their simulated boards",
		ArgsUsage: "RECIPE_DIR...",
		Description: "Builds each recipe through the store (a store hit runs no compiler) and runs the store's " +
			"artifact, the bytes kiln flash writes, on the board's simulator once per [[test]]: input sent to the " +
			"UART, a simulated time limit, the expected UART output (exact, regular expressions in order, or a " +
			"golden file) and pin periods. Exits 1 if any test fails, with a diff of expected and actual.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "junit", Usage: "write JUnit XML to `FILE`"},
			storeFlag,
		},
		Action: runTest,
	})
}

// errTestsFailed makes kiln test exit 1 after its report.
var errTestsFailed = errors.New("test: some tests failed")

func runTest(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usagef("test: want RECIPE_DIR... (see kiln test --help)")
	}
	return testRecipes(c.Context, args, c.String("junit"), c.String("store"), envOf(c))
}

func testRecipes(ctx context.Context, dirs []string, junit, storeDir string, e *env) error {
	st, err := store.Open(storeDir)
	if err != nil {
		return err
	}
	var suites []sim.Suite
	passed, failed := 0, 0
	for _, dir := range dirs {
		s := testRecipe(ctx, dir, st, e)
		for _, o := range s.Outcomes {
			if o.Passed() {
				passed++
			} else {
				failed++
			}
		}
		if s.Error != "" {
			failed++
		}
		suites = append(suites, s)
	}
	if junit != "" {
		if err := writeJUnit(junit, suites); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return errTestsFailed
	}
	return nil
}

// testRecipe runs one recipe's tests and prints their verdicts.
func testRecipe(ctx context.Context, dir string, st *store.Store, e *env) sim.Suite {
	s := sim.Suite{Name: dir}
	fail := func(err error) sim.Suite {
		s.Error = err.Error()
		fmt.Fprintf(e.stdout, "ERROR %s: %s\n", dir, oneLine(err.Error()))
		return s
	}
	r, err := recipes.Load(dir)
	if err != nil {
		return fail(err)
	}
	s.Name = r.Name
	if len(r.Tests) == 0 {
		return fail(fmt.Errorf("%s has no [[test]] sections", r.File))
	}
	b, err := boards.Get(r.Board)
	if err != nil {
		return fail(err)
	}
	a, res, err := sim.FromRecipe(ctx, dir, st)
	if err != nil {
		return fail(err)
	}
	s.Properties = [][2]string{
		{"board", b.Name}, {"derivation", res.Derivation}, {"artifact", a.Path}, {"sha256", a.SHA256},
		{"image_sha256", a.Image.SHA256()},
	}
	fmt.Fprintf(e.stdout, "%s %s on %s: %s (sha256 %s)\n", r.Name, r.Version, b.Name, a.Path, a.SHA256)
	for _, t := range r.Tests {
		opts := sim.TestOptions(t)
		opts.Board, opts.Artifact = b, a
		rr, err := sim.Run(ctx, opts)
		if err != nil {
			o := &sim.Outcome{Name: t.Name, Failures: []string{err.Error()}}
			s.Outcomes = append(s.Outcomes, o)
			fmt.Fprintf(e.stdout, "FAIL %s: %s\n", t.Name, oneLine(err.Error()))
			continue
		}
		o := sim.Expect(t, r.Dir, rr)
		s.Outcomes = append(s.Outcomes, o)
		if s.Properties[len(s.Properties)-1][0] != "simulator" {
			s.Properties = append(s.Properties, [2]string{"simulator", rr.Engine + " (" + rr.Clock + ")"})
		}
		how := fmt.Sprintf("%v simulated in %v", rr.Simulated.Round(time.Microsecond), rr.Wall.Round(time.Millisecond))
		if o.Passed() {
			fmt.Fprintf(e.stdout, "PASS %s (%s)\n", t.Name, how)
			continue
		}
		fmt.Fprintf(e.stdout, "FAIL %s (%s)\n", t.Name, how)
		for _, f := range o.Failures {
			fmt.Fprintf(e.stdout, "    %s\n", strings.ReplaceAll(f, "\n", "\n    "))
		}
	}
	return s
}

func writeJUnit(path string, suites []sim.Suite) error {
	f, err := os.CreateTemp(dirOf(path), ".junit-")
	if err != nil {
		return fmt.Errorf("test: --junit: %w", err)
	}
	defer os.Remove(f.Name())
	if err := sim.WriteJUnit(f, suites); err != nil {
		f.Close()
		return fmt.Errorf("test: --junit: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("test: --junit: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("test: --junit: %w", err)
	}
	return os.Rename(f.Name(), path)
}

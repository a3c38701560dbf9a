package cli

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/cache"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "build",
		Usage:     "build a recipe in the offline sandbox (or find it in the store)",
		ArgsUsage: "RECIPE_DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "copy the outputs to `DIR` (default out/<name>)"},
			&cli.BoolFlag{Name: "check", Usage: "build again in a fresh sandbox and fail unless every output is bit-identical"},
			&cli.BoolFlag{Name: "no-sandbox", Usage: "build on the host where namespaces are not allowed (recorded in the manifest)"},
			storeFlag,
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "parallel compiles", DefaultText: "one per CPU"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "say what each step did (on stderr)"},
			substituterFlag, policyFlag,
			jsonFlag,
		},
		Action: runBuild,
	})
}

func runBuild(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("build: want RECIPE_DIR (see kiln build --help)")
	}
	if r, err := recipes.Load(args[0]); err == nil && r.Kind == recipes.KindImage {
		if c.Bool("check") {
			return usagef("build: --check is not supported for image recipes yet (build twice and compare image.img)")
		}
		return imageBuild(c, args[0], c.String("out")) // kind = "image": image.go
	}
	e := envOf(c)
	s, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	dir := args[0]
	out := c.String("out")
	if out == "" {
		out = filepath.Join("out", filepath.Base(filepath.Clean(dir)))
	}
	sub, err := newSubstitution(c, s)
	if err != nil {
		return err
	}
	opts := firmware.Options{
		Dir: dir, Store: s, Out: out, Check: c.Bool("check"), NoSandbox: c.Bool("no-sandbox"), Jobs: c.Int("jobs"),
		Substitute: sub.hook(), Fetcher: &fetch.Fetcher{Store: s, HTTP: http.DefaultClient, Substitute: sub.hook()},
	}
	if c.Bool("verbose") {
		opts.Log = e.line
	}
	// What --out held before: a warm rebuild into it need not redo the
	// evidence, which is a function of the manifest (and the key).
	prev, _ := firmware.ReadManifest(out)
	res, err := firmware.Build(c.Context, opts)
	if err != nil {
		var ce *firmware.CommandError
		if errors.As(err, &ce) && ce.Log != "" {
			// An arduino build: the compiler's whole output, with host
			// paths (file:line:col), then kiln's line.
			fmt.Fprint(e.stderr, strings.TrimRight(ce.Output, "\n")+"\n")
			return withHint(err, "every command and its output: "+ce.Log)
		}
		return buildHints(err)
	}
	// Evidence beside manifest.json (sign.go): sbom.cdx.json, provenance.json.
	if !(res.Hit && !res.Substituted && prev != nil && prev.Derivation == res.Derivation && evidenceIn(out)) {
		if err := writeEvidence(c, dir, res, sub.Origins()); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		j := buildJSON(res)
		if o := sub.Origins(); len(o) > 0 {
			j["substituted_from"] = o
		}
		return e.printJSON(j)
	}
	m := res.Manifest
	how := fmt.Sprintf("built in %s", res.Timings.Total.Round(time.Millisecond))
	if res.Hit {
		how = "store hit, no compiler ran"
	}
	if o := cache.OriginOf(s, res.StorePath); res.Substituted && o != nil {
		how = fmt.Sprintf("substituted from %s, signed by %s; no compiler ran", o.Cache, o.Signer)
	}
	fmt.Fprintf(e.stdout, "%s %s for %s\n", m.Name, m.Version, m.Board)
	fmt.Fprintf(e.stdout, "derivation   %s\n", res.Derivation)
	fmt.Fprintf(e.stdout, "store        %s (%s)\n", res.StorePath, how)
	for _, name := range []string{firmware.ELFName, firmware.HEXName, firmware.BINName, firmware.DFUName} {
		if o, ok := m.Outputs[name]; ok {
			fmt.Fprintf(e.stdout, "%-13s%s  %d bytes\n", name, o.SHA256, o.Size)
		}
	}
	fmt.Fprintf(e.stdout, "image        %s  %d of %d bytes of flash at 0x%x\n", m.ImageSHA256, m.ImageSize, m.FlashSize, m.LoadAddress)
	if !m.Sandbox {
		fmt.Fprintf(e.stdout, "sandbox      none (--no-sandbox)\n")
	}
	if res.Checked {
		fmt.Fprintf(e.stdout, "check        rebuilt in a fresh sandbox: every output bit-identical\n")
	}
	fmt.Fprintf(e.stdout, "out          %s\n", res.Out)
	return nil
}

// evidenceIn reports whether dir holds the evidence files writeEvidence
// writes (the SBOM always; provenance.json only with a signing key).
func evidenceIn(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "sbom.cdx.json"))
	return err == nil
}

// trailingFlags applies flags written after the positional arguments
// (`kiln build DIR --out X`), which the flag package leaves as arguments,
// and returns the positional arguments.
func trailingFlags(c *cli.Context) ([]string, error) {
	var pos []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		var fl cli.Flag
		for _, f := range c.Command.Flags {
			for _, n := range f.Names() {
				if n == name {
					fl = f
				}
			}
		}
		if fl == nil {
			return nil, usagef("%s: flag provided but not defined: %s", c.Command.Name, a)
		}
		if _, isBool := fl.(*cli.BoolFlag); isBool {
			if !hasVal {
				val = "true"
			}
		} else if !hasVal {
			if i+1 >= len(args) {
				return nil, usagef("%s: flag needs an argument: %s", c.Command.Name, a)
			}
			i++
			val = args[i]
		}
		if err := c.Set(name, val); err != nil {
			return nil, usagef("%s: %s: %v", c.Command.Name, a, err)
		}
	}
	return pos, nil
}

// buildJSON is the one object `kiln build --json` prints.
func buildJSON(res *firmware.Result) map[string]any {
	outs := map[string]any{}
	for name, o := range res.Manifest.Outputs {
		outs[name] = map[string]any{"sha256": o.SHA256, "size": o.Size}
	}
	mp := filepath.Join(res.StorePath, firmware.ManifestName)
	if sum, err := recipes.HashFile(mp); err == nil {
		st, _ := os.Stat(mp)
		outs[firmware.ManifestName] = map[string]any{"sha256": sum, "size": st.Size()}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return map[string]any{
		"name":         res.Name,
		"derivation":   res.Derivation,
		"store_path":   res.StorePath,
		"out":          res.Out,
		"hit":          res.Hit,
		"substituted":  res.Substituted,
		"checked":      res.Checked,
		"sandbox":      res.Manifest.Sandbox,
		"outputs":      outs,
		"image_sha256": res.Manifest.ImageSHA256,
		"load_address": res.Manifest.LoadAddress,
		"durations_ms": map[string]float64{
			"hash": ms(res.Timings.Hash), "fetch": ms(res.Timings.Fetch), "build": ms(res.Timings.Build),
			"check": ms(res.Timings.Check), "total": ms(res.Timings.Total),
		},
	}
}

// buildHints adds what to do next to the errors a user can act on.
func buildHints(err error) error {
	var ce *firmware.CommandError
	switch {
	case errors.Is(err, firmware.ErrNoSandbox):
		return withHint(err, "kiln builds in user, mount and network namespaces; allow them (sysctl kernel.unprivileged_userns_clone=1) or pass --no-sandbox")
	case errors.Is(err, store.ErrTampered):
		return withHint(err, "run `kiln store verify` to list tampered entries, then `kiln store gc` or remove the entry and build again")
	case errors.As(err, &ce):
		var hints []string
		lines := strings.Split(strings.TrimSpace(ce.Output), "\n")
		if len(lines) > 12 {
			lines = lines[len(lines)-12:]
		}
		for _, l := range lines {
			if l = strings.TrimRight(l, " \t"); l != "" {
				hints = append(hints, l)
			}
		}
		return withHint(err, hints...)
	}
	return err
}

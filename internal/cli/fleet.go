package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/fleet"
	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/store"
)

func init() {
	register(&cli.Command{
		Name:  "fleet",
		Usage: "deploy images to a fleet of devices in waves, and show drift",
		Subcommands: []*cli.Command{
			{
				Name:      "deploy",
				Usage:     "roll the declared images out: canary first, then growing waves; halt at the failure threshold",
				ArgsUsage: "FLEET.toml",
				Flags:     []cli.Flag{jsonFlag, policyFlag, logFlag, storeFlag}, // trust policy, audit log (sign.go, log.go)
				Action:    runFleetDeploy,
			},
			{
				Name:      "status",
				Usage:     "what every device runs (read from the device) against what the fleet file declares",
				ArgsUsage: "FLEET.toml",
				Flags: []cli.Flag{jsonFlag, storeFlag, &cli.BoolFlag{Name: "verify",
					Usage: "also hash each running slot on the device and compare it with the declared image (finds slots whose bytes were changed)"}},
				Action: runFleetStatus,
			},
		},
	})
}

func runFleetDeploy(c *cli.Context) error {
	e := envOf(c)
	if err := argN(c, 1, "one FLEET.toml"); err != nil {
		return err
	}
	f, err := fleet.Load(c.Args().First())
	if err != nil {
		return err
	}
	var log func(string, ...any)
	if !c.Bool("json") {
		log = func(format string, a ...any) { fmt.Fprintf(e.stderr, format+"\n", a...) }
	}
	if err := resolveFleet(c, f, log); err != nil {
		return err
	}
	images := map[string]string{}
	for _, g := range f.Groups {
		images[g.Name] = f.Path(g.Image)
	}
	// The trust gate (internal/op): every device's image, before any
	// device I/O; the rollout then writes the checked private copies.
	pol, err := loadPolicy(c)
	if err != nil {
		return err
	}
	release, err := op.PrepareFleet(pol, f)
	if err != nil {
		return opError(err, "", c.Args().First())
	}
	defer release()
	rep, err := f.Deploy(c.Context, fleet.HelperDir(), log)
	if lerr := logFleet(c, images, f, rep); err == nil && lerr != nil {
		return lerr
	}
	if rep != nil {
		if c.Bool("json") {
			out := map[string]any{"report": rep}
			if err != nil {
				out["error"] = err.Error()
			}
			if perr := e.printJSON(out); perr != nil && err == nil {
				return perr
			}
		} else {
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tWAVE\tOUTCOME\tSENT\tDETAIL")
			for _, d := range rep.Devices {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", d.Name, d.Wave, d.Outcome, humanBytes(d.BytesSent), d.Error)
			}
			tw.Flush()
		}
	}
	if errors.Is(err, fleet.ErrHalted) {
		return withHint(err, "fix the failing devices (kiln fleet status shows what each runs), then deploy again: updated devices are skipped")
	}
	return err
}

func runFleetStatus(c *cli.Context) error {
	e := envOf(c)
	if err := argN(c, 1, "one FLEET.toml"); err != nil {
		return err
	}
	f, err := fleet.Load(c.Args().First())
	if err != nil {
		return err
	}
	if err := resolveFleet(c, f, nil); err != nil {
		return err
	}
	st, err := f.Status(c.Context, c.Bool("verify"))
	if err != nil {
		return err
	}
	drift := 0
	for _, s := range st {
		if s.Drift {
			drift++
		}
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"devices": st, "drift": drift})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tGROUP\tSLOT\tRUNNING\tDECLARED\tSTATE")
	short := func(s string) string {
		if len(s) > 16 {
			return s[:16]
		}
		return s
	}
	for _, s := range st {
		state := "ok"
		switch {
		case s.Error != "":
			state = "unreachable: " + s.Error
		case s.Trial:
			state = "drift (trial boot, uncommitted)"
		case s.Proof == "mismatch":
			state = "drift: the slot claims the declared image but its bytes differ (root sha256 " + short(s.RootSHA256) + ")"
		case s.Drift:
			state = "drift"
		case s.Proof == "match":
			state = "ok (verified on the device)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Group, s.Slot, short(s.Running), short(s.Declared), state)
	}
	tw.Flush()
	fmt.Fprintf(e.stdout, "%d of %d devices drift from the fleet file\n", drift, len(st))
	return nil
}

// resolveFleet builds the image recipes that groups name, through the store.
func resolveFleet(c *cli.Context, f *fleet.File, log func(string, ...any)) error {
	for _, g := range f.Groups {
		if g.Recipe == "" {
			continue
		}
		s, err := store.Open(c.String("store"))
		if err != nil {
			return err
		}
		// Binary caches: KILN_SUBSTITUTERS and the policy's [[cache]] tables (cache.go).
		sub, err := newSubstitution(c, s)
		if err != nil {
			return err
		}
		return f.Resolve(c.Context, fleet.StoreBuilderWith(s, log, sub.hook()))
	}
	return nil
}

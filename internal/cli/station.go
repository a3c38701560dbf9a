package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"kiln.dev/kiln/internal/station"
	"kiln.dev/kiln/internal/station/dashboard"
	"kiln.dev/kiln/internal/trust"
)

func init() {
	register(&cli.Command{
		Name:      "station",
		Usage:     "provision many boards at once: firmware, a serial number and a key pair per device, each proven and logged",
		ArgsUsage: "STATION.toml",
		Description: "Runs the provisioning line STATION.toml describes (which signed artifact goes to which board, " +
			"on which ports, where serial numbers come from) until interrupted, or until --jobs jobs have finished. " +
			"Every port with a board gets one job; a board plugged in again gets a fresh one. Each job writes the " +
			"firmware and the device's provisioning record, reads both back, and appends one record to the audit " +
			"log; a serial number is consumed only by a verified device. On an interrupt, jobs in flight finish " +
			"(or are recorded as aborted after the file's grace period). The audit log is verified at start and exit.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "http", Usage: "serve the live dashboard on `ADDR` (a bare :PORT is loopback only; 0.0.0.0:PORT for the network)"},
			&cli.IntFlag{Name: "jobs", Usage: "stop after `N` jobs have finished"},
			policyFlag, logFlag, jsonFlag,
		},
		Action: runStation,
	})
}

func runStation(c *cli.Context) error {
	e := envOf(c)
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("station: want one STATION.toml (see kiln station --help)")
	}
	cfg, err := station.LoadConfig(args[0])
	if err != nil {
		if errors.Is(err, station.ErrConfig) {
			return withHint(err, "see kiln station --help and the station package's Config for the format")
		}
		return err
	}
	opts := station.Options{MaxJobs: c.Int("jobs")}
	// The log: the file's, else --log / $KILN_LOG / kiln's default.
	if cfg.Log == "" || c.IsSet("log") {
		opts.Log = logPath(c)
		if opts.Log == "" {
			return usagef("station: a station always keeps an audit log (--log off is not allowed)")
		}
	}
	log := opts.Log
	if log == "" {
		log = cfg.Log
	}
	if cfg.LogKey != "" {
		data, err := os.ReadFile(cfg.LogKey)
		if err != nil {
			return fmt.Errorf("station: log key: %w", err)
		}
		if opts.LogKey, err = trust.ParseSecretKey(data, nil); err != nil {
			return fmt.Errorf("station: log key %s: %w", cfg.LogKey, err)
		}
	} else if opts.LogKey, err = logSigningKey(); err != nil {
		return withHint(err, "set log_key in the station file or KILN_LOG_KEY to a minisign secret key")
	}
	// The policy: --policy, else the file's, else $KILN_POLICY.
	if c.IsSet("policy") || cfg.Policy == "" {
		if opts.Policy, err = loadPolicy(c); err != nil {
			return err
		}
	}

	var mu sync.Mutex
	if !e.json {
		opts.OnEvent = func(ev station.Event) {
			var line string
			switch ev.State {
			case station.StateVerified:
				line = fmt.Sprintf("%s: verified %s (%s), log #%d", ev.Port, ev.Serial, ev.Device, ev.Seq)
			case station.StateFailed, station.StateAborted:
				line = fmt.Sprintf("%s: %s (%s): %s", ev.Port, ev.State, ev.Result, ev.Error)
			case station.StateAbsent:
				line = fmt.Sprintf("%s: unplugged", ev.Port)
			case station.StateRunning:
				if ev.Phase != "trust" {
					return
				}
				line = fmt.Sprintf("%s: job %d started (%s)", ev.Port, ev.Job, ev.Board)
			default:
				return
			}
			mu.Lock()
			fmt.Fprintln(e.stdout, line)
			mu.Unlock()
		}
	}
	s, err := station.New(cfg, opts)
	if err != nil {
		switch {
		case errors.Is(err, trust.ErrUntrusted):
			return withHint(fmt.Errorf("%w: %w", ErrUntrusted, err), "no device was touched: sign the artifact with a key the policy trusts (kiln sign ARTIFACT)")
		case errors.Is(err, station.ErrLog):
			return withHint(err, "kiln log verify --log "+log+" shows where; keep the damaged log for the auditor and start a new one")
		}
		return err
	}
	if addr := c.String("http"); addr != "" {
		ln, err := net.Listen("tcp", dashboard.Addr(addr))
		if err != nil {
			return fmt.Errorf("station: dashboard: %w", err)
		}
		srv := &http.Server{Handler: dashboard.GuardHost(ln.Addr(), dashboard.Handler(s)), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			srv.Close()
		}()
		fmt.Fprintf(e.stderr, "dashboard: http://%s/\n", ln.Addr())
	}
	fmt.Fprintf(e.stderr, "station %s: log %s; interrupt to stop\n", cfg.Name, log)
	if !e.json {
		// A running tally for the operator: every 2 s on a terminal,
		// every 30 s into a file or pipe.
		every := 30 * time.Second
		if f, ok := e.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			every = 2 * time.Second
		}
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			t := time.NewTicker(every)
			defer t.Stop()
			last := ""
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				line := tally(s.Status())
				if line == last {
					continue
				}
				last = line
				mu.Lock()
				fmt.Fprintln(e.stdout, line)
				mu.Unlock()
			}
		}()
	}
	runErr := s.Run(c.Context)
	st := s.Status()
	if e.json {
		if err := e.printJSON(st); err != nil {
			return err
		}
	} else {
		printStationSummary(e, st)
	}
	if runErr != nil {
		return runErr
	}
	return nil
}

// tally is the one-line running summary.
func tally(st station.Status) string {
	yield := "-"
	if st.Verified+st.Failed > 0 {
		yield = fmt.Sprintf("%.1f%%", 100*st.Yield)
	}
	line := fmt.Sprintf("-- %d running, %d verified, %d failed, %d aborted; yield %s", st.Running, st.Verified, st.Failed, st.Aborted, yield)
	if st.LastError != "" {
		le := st.LastError
		if len(le) > 100 {
			le = le[:97] + "..."
		}
		line += "; last error: " + le
	}
	return line
}

// printStationSummary prints the per-port table and the totals.
func printStationSummary(e *env, st station.Status) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tBOARD\tSTATE\tJOBS\tVERIFIED\tFAILED\tLAST ERROR")
	for _, p := range st.Ports {
		state := p.State
		if !p.Present {
			state += " (unplugged)"
		}
		last := p.LastError
		if len(last) > 80 {
			last = last[:77] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", p.Port, p.Board, state, p.Jobs, p.Verified, p.Failed, last)
	}
	tw.Flush()
	logState := "audit log not verified"
	if st.LogOK != nil && *st.LogOK {
		logState = "audit log verified"
	}
	yield := "-"
	if st.Verified+st.Failed > 0 {
		yield = fmt.Sprintf("%.1f%%", 100*st.Yield)
	}
	fmt.Fprintf(e.stdout, "%d jobs: %d verified, %d failed, %d aborted; yield %s; %s (%s)\n",
		st.Jobs, st.Verified, st.Failed, st.Aborted, yield, logState, strings.TrimSpace(st.Log))
}

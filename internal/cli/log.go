package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/fleet"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// logFlag names the audit log; the commands that touch devices take it.
var logFlag = &cli.StringFlag{Name: "log", Usage: "audit log `FILE` (default $KILN_LOG or ~/.local/state/kiln/audit.jsonl; \"off\" writes none)"}

func init() {
	register(&cli.Command{
		Name:  "log",
		Usage: "check or show the hash-chained audit log of flashes, verifies and audits",
		Subcommands: []*cli.Command{
			{
				Name:  "verify",
				Usage: "check the chain, the signed checkpoints and the head: any edit, deletion, reordering or cut is reported",
				Flags: []cli.Flag{
					logFlag,
					&cli.StringSliceFlag{Name: "pub", Aliases: []string{"p"}, Usage: "public key `FILE` allowed to sign checkpoints (default: the log's signing key's .pub, else the first checkpoint's key)"},
					&cli.StringFlag{Name: "head", Usage: "a copy of the head checkpoint kept elsewhere (`FILE`; default LOG.head)"},
					&cli.StringSliceFlag{Name: "witness", Usage: "a signed head exported by kiln log checkpoint (`FILE`, repeatable): the log must still hold it"},
					jsonFlag,
				},
				Action: runLogVerify,
			},
			{
				Name:  "checkpoint",
				Usage: "seal the log with a checkpoint signed by your kiln key and export it (a witness to keep where the log's writers cannot reach)",
				Flags: []cli.Flag{
					logFlag,
					&cli.StringFlag{Name: "out", Usage: "write the signed head to `FILE` (default: standard output)"},
				},
				Action: runLogCheckpoint,
			},
			{
				Name:  "show",
				Usage: "print the log's records (unchecked: run kiln log verify for proof)",
				Flags: []cli.Flag{
					logFlag,
					&cli.BoolFlag{Name: "head", Usage: "print the head checkpoint line (keep a copy elsewhere to detect a rewritten log)"},
					jsonFlag,
				},
				Action: runLogShow,
			},
		},
	})
}

// logPath is --log, else $KILN_LOG, else $XDG_STATE_HOME/kiln/audit.jsonl
// (~/.local/state/kiln/audit.jsonl). "" means no log.
func logPath(c *cli.Context) string {
	p := c.String("log")
	if p == "" {
		p = os.Getenv("KILN_LOG")
	}
	if p == "" {
		state := os.Getenv("XDG_STATE_HOME")
		if state == "" {
			home, _ := os.UserHomeDir()
			state = filepath.Join(home, ".local", "state")
		}
		p = filepath.Join(state, "kiln", "audit.jsonl")
	}
	if p == "off" {
		return ""
	}
	return p
}

// logKeyPath is the key that signs the log's checkpoints: $KILN_LOG_KEY
// (a station's own key), else the operator's kiln key ($KILN_KEY or kiln
// keygen's). A key generated beside the log would let whoever can rewrite
// the log re-sign it.
func logKeyPath() string {
	if k := os.Getenv("KILN_LOG_KEY"); k != "" {
		return k
	}
	return defaultKeyPath()
}

// logSigningKey reads the checkpoint key. Without one (no kiln keygen yet,
// or an encrypted key) the log is still chained, only not sealed: nil, nil.
// $KILN_LOG_KEY names a key that must be there.
func logSigningKey() (*trust.SecretKey, error) {
	kp := logKeyPath()
	data, err := os.ReadFile(kp)
	if errors.Is(err, os.ErrNotExist) && os.Getenv("KILN_LOG_KEY") == "" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit log key: %w", err)
	}
	sk, err := trust.ParseSecretKey(data, nil)
	if errors.Is(err, trust.ErrEncryptedKey) && os.Getenv("KILN_LOG_KEY") == "" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit log key %s: %w", kp, err)
	}
	return sk, nil
}

// appendAudit appends one record to the audit log (sealed with a signed
// checkpoint on close). Commands call it after every flash, verify and
// audit, whatever the outcome.
func appendAudit(c *cli.Context, e auditlog.Entry) error {
	p := logPath(c)
	if p == "" {
		return nil
	}
	key, err := logSigningKey()
	if err != nil {
		return withHint(err, "set KILN_LOG_KEY to a minisign secret key, or --log off to write no audit record")
	}
	l, err := auditlog.Open(p, key, auditlog.Options{})
	if err != nil {
		return err
	}
	if _, err := l.Append(e); err != nil {
		l.Close()
		return err
	}
	return l.Close()
}

// appendResult logs e with the outcome err and returns err (or, when the
// operation succeeded, the log's error).
func appendResult(c *cli.Context, e auditlog.Entry, err error) error {
	if e.Result == "" {
		e.Result = resultOf(err)
	}
	if err != nil && e.Detail == "" {
		e.Detail = oneLine(err.Error())
	}
	if lerr := appendAudit(c, e); lerr != nil {
		if err != nil {
			return err
		}
		return fmt.Errorf("audit log: %w", lerr)
	}
	return err
}

// resultOf names an operation's outcome for the log.
func resultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUntrusted):
		return "untrusted"
	case exitCode(err) == ExitVerify:
		return "mismatch"
	}
	return "error"
}

func runLogVerify(c *cli.Context) error {
	e := envOf(c)
	p := logPath(c)
	if p == "" {
		return usagef("log verify: --log off names no log")
	}
	var keys []*trust.PublicKey
	pubs := c.StringSlice("pub")
	if len(pubs) == 0 {
		if _, err := os.Stat(pubPathFor(logKeyPath())); err == nil {
			pubs = []string{pubPathFor(logKeyPath())}
		}
	}
	for _, f := range pubs {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		pk, err := trust.ParsePublicKey(data)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		keys = append(keys, pk)
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	headFile := c.String("head")
	if headFile == "" {
		headFile = auditlog.HeadPath(p)
	}
	head, err := os.ReadFile(headFile)
	if err != nil && !(errors.Is(err, os.ErrNotExist) && c.String("head") == "") {
		return err
	}
	var witnesses [][]byte
	for _, w := range c.StringSlice("witness") {
		data, err := os.ReadFile(w)
		if err != nil {
			return err
		}
		witnesses = append(witnesses, data)
	}
	rep, err := auditlog.Verify(f, auditlog.VerifyOptions{Keys: keys, Head: head, Witnesses: witnesses})
	if err != nil {
		return withHint(err, "the log is not as kiln wrote it: keep it as evidence and compare it with a backup")
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"log": p, "ok": true, "report": rep})
	}
	fmt.Fprintf(e.stdout, "audit log ok: %s: %d records, %d signed checkpoints (key %s)\n", p, rep.Records, rep.Checkpoints, rep.KeyID)
	if head == nil {
		fmt.Fprintf(e.stdout, "note: no head file: a log cut back past its last checkpoint would not be noticed\n")
	}
	if len(witnesses) == 0 {
		fmt.Fprintf(e.stdout, "note: no --witness: a log cut back to an earlier checkpoint (head file copied back) would not be noticed; kiln log checkpoint exports one\n")
	} else {
		fmt.Fprintf(e.stdout, "witnesses    %d: the log holds each, unchanged\n", len(witnesses))
	}
	if rep.Unsealed > 0 {
		fmt.Fprintf(e.stdout, "note: the last %d records are not sealed by a checkpoint yet (an interrupted kiln?)\n", rep.Unsealed)
	}
	return nil
}

func runLogShow(c *cli.Context) error {
	e := envOf(c)
	p := logPath(c)
	if p == "" {
		return usagef("log show: --log off names no log")
	}
	if c.Bool("head") {
		b, err := os.ReadFile(auditlog.HeadPath(p))
		if err != nil {
			return err
		}
		_, err = e.stdout.Write(b)
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	es, err := auditlog.Read(f)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"log": p, "entries": es})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tOPERATOR@HOST\tBOARD\tPORT\tDEVICE\tARTIFACT SHA256\tREAD BACK\tRESULT")
	for _, x := range es {
		if x.Kind == auditlog.KindCheckpoint {
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s@%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Seq, x.Time.Format("2006-01-02 15:04:05"), x.Kind,
			x.Operator, x.Host, dash(x.Board), dash(x.Port), dash(x.Device), short12(x.ArtifactSHA256), short12(x.ReadbackSHA256),
			strings.TrimSpace(x.Result+" "+x.Detail))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func short12(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return dash(h)
}

// logFleet appends one update record per device a rollout touched.
func logFleet(c *cli.Context, images map[string]string, f *fleet.File, rep *fleet.Report) error {
	if rep == nil {
		return nil
	}
	for i, r := range rep.Devices {
		if r.Outcome == fleet.Skipped || i >= len(f.Devices) {
			continue
		}
		d := f.Devices[i]
		e := auditlog.Entry{Kind: auditlog.KindUpdate, Board: groupBoard(f, d.Group), Port: d.URL, Device: d.Name, Artifact: images[d.Group],
			Result: r.Outcome, Detail: oneLine(r.Error)}
		if err := appendAudit(c, e); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
	}
	return nil
}

// groupBoard is the board of a group's image (from its kiln.json).
func groupBoard(f *fleet.File, name string) string {
	for _, g := range f.Groups {
		if g.Name == name {
			return g.Board
		}
	}
	return ""
}

// runLogCheckpoint seals the log with a new signed checkpoint and exports
// it: kept elsewhere, it lets kiln log verify --witness notice the log cut
// back or rewritten to any point before it.
func runLogCheckpoint(c *cli.Context) error {
	if err := argN(c, 0, "no arguments"); err != nil {
		return err
	}
	e := envOf(c)
	p := logPath(c)
	if p == "" {
		return usagef("log checkpoint: --log off names no log")
	}
	key, err := logSigningKey()
	if err != nil {
		return err
	}
	if key == nil {
		return withHint(fmt.Errorf("log checkpoint: no signing key (%s)", logKeyPath()), "kiln keygen makes one (an encrypted key cannot sign unattended)")
	}
	l, err := auditlog.Open(p, key, auditlog.Options{})
	if err != nil {
		return err
	}
	head, err := l.Head()
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if out := c.String("out"); out != "" {
		if err := store.Publish(filepath.Dir(out), []store.File{{Name: filepath.Base(out), Data: head}}); err != nil {
			return fmt.Errorf("log checkpoint: %w", err)
		}
		fmt.Fprintf(e.stderr, "signed head of %s written to %s: keep it where the log's writers cannot change it\n", p, out)
		return nil
	}
	_, err = e.stdout.Write(head)
	return err
}

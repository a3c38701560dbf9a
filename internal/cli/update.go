package cli

import (
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/fleet"
	"kiln.dev/kiln/internal/op"
)

var (
	sshKeyFlag     = &cli.StringSliceFlag{Name: "ssh-key", Usage: "private key `FILE` (default: the ssh agent, then ~/.ssh/id_*)"}
	knownHostsFlag = &cli.StringFlag{Name: "known-hosts", Usage: "known_hosts `FILE` (default ~/.ssh/known_hosts); host keys are always checked"}
)

// sshOptions are the flags of every command that reaches devices over SSH.
func sshOptions(c *cli.Context) op.DiskOptions {
	return op.DiskOptions{KnownHosts: c.String("known-hosts"), KeyFiles: c.StringSlice("ssh-key")}
}

func init() {
	register(&cli.Command{
		Name:      "update",
		Usage:     "A/B update of a running Raspberry Pi over SSH: write the inactive slot, prove it, trial boot, health check, commit or roll back",
		ArgsUsage: "IMAGE (.img or .img.xz with kiln's A/B layout)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "port", Aliases: []string{"p"}, Usage: "`ssh://user@host[:port][/dev/mmcblk0]`", Required: true},
			&cli.StringFlag{Name: "health", Value: "true", Usage: "health check `COMMAND` run on the new slot"},
			&cli.DurationFlag{Name: "health-timeout", Value: 60 * time.Second, Usage: "how long the health check may take"},
			&cli.DurationFlag{Name: "boot-timeout", Value: 120 * time.Second, Usage: "how long a reboot may take"},
			&cli.BoolFlag{Name: "no-delta", Usage: "send whole partitions even when the device holds a similar image"},
			sshKeyFlag, knownHostsFlag, jsonFlag,
			boardFlag, groupFlag, policyFlag, sigFlag, logFlag, // trust policy and audit log (sign.go, log.go)
		},
		Action: runUpdate,
	})
}

func runUpdate(c *cli.Context) error {
	e := envOf(c)
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("update: want one IMAGE (see kiln update --help)")
	}
	pol, err := loadPolicy(c)
	if err != nil {
		return err
	}
	req := op.Request{
		Artifact: args[0], Board: c.String("board"), Port: c.String("port"), Group: c.String("group"), Policy: pol,
		Load:   op.LoadOptions{Sig: c.String("sig")},
		Record: func(en auditlog.Entry) error { return appendAudit(c, en) },
		Disk:   sshOptions(c),
	}
	req.Disk.Update = op.UpdateOptions{
		Health: c.String("health"), HealthTimeout: c.Duration("health-timeout"), BootTimeout: c.Duration("boot-timeout"),
		NoDelta: c.Bool("no-delta"), HelperDir: fleet.HelperDir(),
	}
	bar := newProgress(e.stderr, c.Bool("json"))
	if !c.Bool("json") {
		req.Disk.Update.Log, req.Progress = bar.Logf, bar.Func()
	}
	rep, err := op.Update(c.Context, req)
	bar.Done()
	if c.Bool("json") && rep != nil {
		if perr := e.printJSON(rep); perr != nil && err == nil {
			return perr
		}
	} else if err == nil {
		printReport(e, rep)
	}
	return opError(err, req.Port, req.Artifact)
}

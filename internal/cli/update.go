package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/fleet"
	"kiln.dev/kiln/internal/trust"
)

var (
	sshKeyFlag     = &cli.StringSliceFlag{Name: "ssh-key", Usage: "private key `FILE` (default: the ssh agent, then ~/.ssh/id_*)"}
	knownHostsFlag = &cli.StringFlag{Name: "known-hosts", Usage: "known_hosts `FILE` (default ~/.ssh/known_hosts); host keys are always checked"}
)

func sshOptions(c *cli.Context) ssh.Options {
	return ssh.Options{KnownHosts: c.String("known-hosts"), KeyFiles: c.StringSlice("ssh-key"), Timeout: 10 * time.Second}
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
	a, err := ssh.ParseAddr(c.String("port"))
	if err != nil {
		return usagef("%v", err)
	}
	disk := a.Path
	// Trust policy (sign.go) before any device I/O; every outcome logged (log.go).
	rec := auditlog.Entry{Kind: auditlog.KindUpdate, Board: c.String("board"), Port: c.String("port"), Artifact: args[0]}
	if _, err := checkTrustFile(c, trust.Target{Board: c.String("board"), Group: c.String("group"), Port: c.String("port")}, args[0], c.String("sig")); err != nil {
		return appendResult(c, rec, err)
	}
	img, cleanup, err := plainImage(args[0])
	if err != nil {
		return err
	}
	defer cleanup()
	opts := ssh.UpdateOptions{
		Disk: disk, Health: c.String("health"), HealthTimeout: c.Duration("health-timeout"), BootTimeout: c.Duration("boot-timeout"),
		NoDelta: c.Bool("no-delta"), HelperDir: fleet.HelperDir(),
	}
	bar := newProgress(e.stderr, c.Bool("json"))
	if !c.Bool("json") {
		opts.Log, opts.Progress = bar.Logf, bar.Func()
	}
	res, err := ssh.Update(c.Context, ssh.DialerFor(a, sshOptions(c)), a.Host, img, opts)
	bar.Done()
	if res != nil {
		rec.Device, rec.Derivation, rec.ReadbackSHA256 = res.Device, res.Derivation, res.RootSHA256
	}
	if lerr := appendResult(c, rec, err); err == nil && lerr != nil {
		return lerr
	}
	if c.Bool("json") {
		if perr := printResultJSON(e, res, err); perr != nil {
			return perr
		}
	} else if err == nil {
		fmt.Fprintf(e.stdout, "updated %s: slot %s → %s, derivation %s\n", a.Host, res.From, res.To, res.Derivation)
		fmt.Fprintf(e.stdout, "verified on the device: root sha256 %s, boot sha256 %s; committed after the health check (%s sent of %s)\n",
			res.RootSHA256, res.BootSHA256, humanBytes(res.BytesSent), humanBytes(res.BytesImage))
	}
	if err != nil {
		return sshHints(err)
	}
	return nil
}

// plainImage returns a path to the raw image, decompressing an .img.xz into
// a temporary file (updates need random access to its partitions).
func plainImage(path string) (string, func(), error) {
	if !strings.HasSuffix(path, ".xz") {
		return path, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	tmp, err := os.CreateTemp("", "kiln-update-*.img")
	if err != nil {
		return "", nil, err
	}
	xr := image.NewXZReader(f, 0)
	defer xr.Close()
	if _, err := tmp.ReadFrom(xr); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	tmp.Close()
	return tmp.Name(), func() { os.Remove(tmp.Name()) }, nil
}

func sshHints(err error) error {
	switch {
	case strings.Contains(err.Error(), ssh.ErrHostKey.Error()):
		return withHint(err, "kiln never skips host key checks: add the device's key to known_hosts (ssh-keyscan, checked out of band) or pass --known-hosts")
	case errors.Is(err, ssh.ErrBusy):
		return withHint(err, "wait for the other update to finish; if it is gone, remove the lock directory on the device or reboot it")
	case errors.Is(err, ssh.ErrCommitUnknown):
		return withHint(err, "the device runs the new slot if the commit landed, else the old one after its next restart; see which with kiln fleet status, or run kiln update again")
	case strings.Contains(err.Error(), "no key"):
		return withHint(err, "kiln never asks for a password: give --ssh-key or start an ssh agent")
	}
	return err
}

// runSSHFlash is `kiln flash --port ssh://user@host/dev/sdX IMAGE`: a whole-device write.
func runSSHFlash(c *cli.Context, write bool) error {
	e := envOf(c)
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("%s: want one IMAGE", c.Command.Name)
	}
	if !write {
		return usagef("verify over ssh: use kiln update (A/B) or kiln flash, which both prove the write on the device")
	}
	a, err := ssh.ParseAddr(c.String("port"))
	if err != nil {
		return usagef("%v", err)
	}
	if a.Path == "" || !strings.HasPrefix(a.Path, "/dev/") {
		return usagef("flash --port %s: name the block device, e.g. ssh://root@host/dev/sdb (for A/B updates use kiln update)", c.String("port"))
	}
	var bm *image.Bmap
	bmPath := c.String("bmap")
	if bmPath == "" {
		guess := strings.TrimSuffix(strings.TrimSuffix(args[0], ".xz"), ".img") + ".bmap"
		if _, err := os.Stat(guess); err == nil {
			bmPath = guess
		} else if _, err := os.Stat(filepath.Join(filepath.Dir(args[0]), "image.bmap")); err == nil {
			bmPath = filepath.Join(filepath.Dir(args[0]), "image.bmap")
		}
	}
	if bmPath != "" {
		f, err := os.Open(bmPath)
		if err != nil {
			return err
		}
		bm, err = image.ReadBmap(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", bmPath, err)
		}
	}
	// Trust policy (sign.go) before any device I/O; every outcome logged (log.go).
	rec := auditlog.Entry{Kind: auditlog.KindFlash, Board: c.String("board"), Port: c.String("port"), Artifact: args[0]}
	if _, err := checkTrustFile(c, trust.Target{Board: c.String("board"), Group: c.String("group"), Port: c.String("port")}, args[0], c.String("sig")); err != nil {
		return appendResult(c, rec, err)
	}
	cl, err := ssh.Dial(c.Context, a, sshOptions(c))
	if err != nil {
		return appendResult(c, rec, sshHints(err))
	}
	defer cl.Close()
	bar := newProgress(e.stderr, c.Bool("json"))
	var prog func(done, total int64)
	if f := bar.Func(); f != nil {
		prog = func(d, t int64) { f("write", d, t) }
	}
	res, err := ssh.WriteDevice(c.Context, cl, a.Path, args[0], bm, prog)
	bar.Done()
	if res != nil {
		rec.Device, rec.ArtifactSHA256, rec.ReadbackSHA256 = res.Device, res.ImageSHA256, res.DeviceSHA256
	}
	if lerr := appendResult(c, rec, err); err == nil && lerr != nil {
		return lerr
	}
	if c.Bool("json") {
		if perr := printResultJSON(e, res, err); perr != nil {
			return perr
		}
	} else if err == nil {
		fmt.Fprintf(e.stdout, "flashed %s to %s:%s: %s in %d ranges (holes skipped)\n", args[0], a.Host, a.Path, humanBytes(res.BytesWritten), res.Ranges)
		fmt.Fprintf(e.stdout, "verified: sha256 %s computed on the device (%.1fs)\n", res.DeviceSHA256, res.Seconds)
	}
	return err
}

// printResultJSON prints {"result": res, "error": "..."}; it reports a print
// failure only when there is no error of the command's own to return.
func printResultJSON(e *env, res any, err error) error {
	out := map[string]any{"result": res}
	if err != nil {
		out["error"] = err.Error()
	}
	if perr := e.printJSON(out); perr != nil && err == nil {
		return perr
	}
	return nil
}

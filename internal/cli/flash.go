package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/op"
)

// Flags flash and verify share.
var (
	boardFlag    = &cli.StringFlag{Name: "board", Aliases: []string{"b"}, Usage: "board `NAME` (see kiln boards; default: the artifact's own, from its manifest.json or kiln.json)"}
	portFlag     = &cli.StringFlag{Name: "port", Aliases: []string{"p"}, Usage: "`PORT`: a device or pty path, auto, usb:SERIAL, emu:BOARD, dfu:[VID:PID][,serial=S], ssh://user@host/dev/sdX"}
	protocolFlag = &cli.StringFlag{Name: "protocol", Usage: "flashing `PROTOCOL` (default: the board's)"}
	addressFlag  = &cli.StringFlag{Name: "address", Usage: "load `ADDRESS` of a .bin (e.g. 0x08000000)"}
	baudFlag     = &cli.IntFlag{Name: "baud", Usage: "serial line `RATE`", DefaultText: "the board's"}
)

// openDevice opens the port; tests replace it to count opens.
var openDevice = device.Open

func init() {
	register(&cli.Command{
		Name:      "flash",
		Usage:     "write an artifact to a board, then prove it by reading it back",
		ArgsUsage: "ARTIFACT (.hex, .elf, .bin with --address, or a build output directory)",
		Flags: []cli.Flag{boardFlag, portFlag, protocolFlag, addressFlag, baudFlag, jsonFlag, policyFlag, sigFlag, groupFlag, logFlag,
			sshKeyFlag, knownHostsFlag, &cli.StringFlag{Name: "bmap", Usage: "block map `FILE` for an image over ssh:// (default: beside the image)"},
			&cli.BoolFlag{Name: "unprotect", Usage: "remove the chip's read-out protection first; the chip erases its whole flash as it does (swd)"},
			&cli.BoolFlag{Name: "force", Usage: "write a local disk that does not say it is removable (blockdev)"}},
		Action: func(c *cli.Context) error {
			return runFlashOrVerify(c, true)
		},
	})
}

// flashRequest turns flash's and verify's flags into an op.Request.
func flashRequest(c *cli.Context) (op.Request, error) {
	args, err := trailingFlags(c)
	if err != nil {
		return op.Request{}, err
	}
	if len(args) != 1 {
		return op.Request{}, usagef("%s: want one ARTIFACT (see kiln %s --help)", c.Command.Name, c.Command.Name)
	}
	if c.String("port") == "" {
		return op.Request{}, usagef("%s: --port is required (see kiln %s --help)", c.Command.Name, c.Command.Name)
	}
	e := envOf(c)
	req := op.Request{
		Artifact: args[0], Board: c.String("board"), Port: c.String("port"), Protocol: c.String("protocol"),
		Group: c.String("group"),
		Load:  op.LoadOptions{Sig: c.String("sig"), Bmap: c.String("bmap")},
		Device: device.Options{
			Baud:      c.Int("baud"),
			Unprotect: c.Bool("unprotect"),
			Note:      e.note,
		},
		Disk:   sshOptions(c),
		Record: func(en auditlog.Entry) error { return appendAudit(c, en) },
		Open:   openDevice,
	}
	req.Disk.Force = c.Bool("force")
	if s := c.String("address"); s != "" {
		a, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return req, usagef("--address %q: want a number such as 0x08000000", s)
		}
		a32 := uint32(a)
		req.Load.Address = &a32
	}
	if req.Board != "" {
		if _, err := boards.Get(req.Board); err != nil {
			return req, withHint(err, "kiln boards lists the boards kiln knows")
		}
	}
	if req.Policy, err = loadPolicy(c); err != nil {
		return req, err
	}
	return req, nil
}

func runFlashOrVerify(c *cli.Context, write bool) error {
	e := envOf(c)
	req, err := flashRequest(c)
	if err != nil {
		return err
	}
	if write && req.Port == "auto" && op.IsDisk(req.Artifact) {
		return autoDisk(e, c.Bool("json"))
	}
	bar := newProgress(e.stderr, c.Bool("json"))
	req.Progress = bar.Func()
	var rep *op.Report
	if write {
		rep, err = op.Flash(c.Context, req)
	} else {
		rep, err = op.Verify(c.Context, req)
	}
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

// printReport prints what a device operation proved.
func printReport(e *env, rep *op.Report) {
	dev := ""
	if rep.Device != "" {
		dev = " (" + rep.Device + ")"
	}
	switch {
	case rep.Update != nil:
		u := rep.Update
		fmt.Fprintf(e.stdout, "updated %s: slot %s → %s, derivation %s\n", u.Device, u.From, u.To, u.Derivation)
		fmt.Fprintf(e.stdout, "verified on the device: root sha256 %s, boot sha256 %s; committed after the health check (%s sent of %s)\n",
			u.RootSHA256, u.BootSHA256, humanBytes(u.BytesSent), humanBytes(u.BytesImage))
	case rep.Disk != nil:
		d := rep.Disk
		fmt.Fprintf(e.stdout, "flashed %s to %s: %s in %d ranges (holes skipped)\n", rep.Image, rep.Port, humanBytes(d.BytesWritten), d.Ranges)
		fmt.Fprintf(e.stdout, "verified: sha256 %s of the written ranges, read from the device past its cache (write %.1fs, verify %.1fs)\n", d.DeviceSHA256, d.WriteSec, d.VerifySec)
	case rep.Op == "flash":
		fmt.Fprintf(e.stdout, "flashed %d bytes of %s to %s at %s%s\n", rep.Bytes, rep.Image, rep.Board, rep.Port, dev)
		fmt.Fprintf(e.stdout, "verified: sha256 %s read back from the device (write %.2fs, verify %.2fs)\n", rep.DeviceSHA256, rep.WriteSec, rep.VerifySec)
	default:
		fmt.Fprintf(e.stdout, "verified %d bytes of %s to %s at %s%s\n", rep.Bytes, rep.Image, rep.Board, rep.Port, dev)
		fmt.Fprintf(e.stdout, "verified: sha256 %s read back from the device (%.2fs)\n", rep.DeviceSHA256, rep.VerifySec)
	}
}

// opError classifies a device operation's error by sentinel and adds the
// hints a user can act on.
func opError(err error, port, artifact string) error {
	var u usageError
	switch {
	case err == nil, errors.As(err, &u):
		return err
	case errors.Is(err, op.ErrUsage):
		return usagef("%s", strings.TrimPrefix(err.Error(), op.ErrUsage.Error()+": "))
	case errors.Is(err, op.ErrNoBoard):
		return withHint(usagef("%v", err), "give --board (kiln boards lists them)")
	case errors.Is(err, op.ErrUntrusted):
		return withHint(err, "nothing was written: sign the artifact with a key the policy trusts (kiln sign "+artifact+")")
	case errors.Is(err, op.ErrWrongBoard):
		return withHint(err, "nothing was written: flash the build for this board, or name the board the device is with --board")
	case errors.Is(err, flash.ErrBadImage):
		return withHint(err, "nothing was written: kiln checks the artifact before it opens the port")
	case errors.Is(err, boards.ErrUnknown):
		return withHint(err, "kiln boards lists the boards kiln knows")
	}
	return diagnose(err, port)
}

// diagnose adds hints a user can act on to a device error (from the
// back-end table: the CLI knows no protocol).
func diagnose(err error, port string) error {
	hs := device.Hints(err, port)
	if port == "auto" && errors.Is(err, flash.ErrNoDevice) {
		hs = append(hs, removableHints()...)
	}
	if len(hs) > 0 {
		return withHint(err, hs...)
	}
	return err
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
)

// Flags flash and verify share.
var (
	boardFlag    = &cli.StringFlag{Name: "board", Aliases: []string{"b"}, Usage: "board `NAME` (see kiln boards)"}
	portFlag     = &cli.StringFlag{Name: "port", Aliases: []string{"p"}, Usage: "`PORT`: a device or pty path, auto, usb:SERIAL, emu:BOARD, dfu:[VID:PID][,serial=S]"}
	protocolFlag = &cli.StringFlag{Name: "protocol", Usage: "flashing `PROTOCOL` (default: the board's)"}
	addressFlag  = &cli.StringFlag{Name: "address", Usage: "load `ADDRESS` of a .bin (e.g. 0x08000000)"}
	baudFlag     = &cli.IntFlag{Name: "baud", Usage: "serial line `RATE` (default: the board's)"}
)

// openDevice opens the port; tests replace it to count opens.
var openDevice = device.Open

func init() {
	register(&cli.Command{
		Name:      "flash",
		Usage:     "write an artifact to a board, then prove it by reading it back",
		ArgsUsage: "ARTIFACT (.hex, .elf, .bin with --address, or a build output directory)",
		Flags: []cli.Flag{boardFlag, portFlag, protocolFlag, addressFlag, baudFlag, jsonFlag, policyFlag, sigFlag, groupFlag, logFlag,
			sshKeyFlag, knownHostsFlag, &cli.StringFlag{Name: "bmap", Usage: "block map `FILE` for an image over ssh:// (default: beside the image)"}},
		Action: func(c *cli.Context) error {
			if strings.HasPrefix(c.String("port"), "ssh://") {
				return runSSHFlash(c, true) // a whole-device write (update.go)
			}
			return runFlashOrVerify(c, true)
		},
	})
}

// flashReport is what flash and verify print with --json.
type flashReport struct {
	Board        string  `json:"board"`
	Port         string  `json:"port"`
	Protocol     string  `json:"protocol"`
	Device       string  `json:"device,omitempty"`
	Image        string  `json:"image"`
	ImageSHA256  string  `json:"image_sha256"`
	DeviceSHA256 string  `json:"device_sha256,omitempty"`
	Bytes        int     `json:"bytes"`
	Verified     bool    `json:"verified"`
	WriteSec     float64 `json:"write_seconds,omitempty"`
	VerifySec    float64 `json:"verify_seconds"`
	TotalSec     float64 `json:"total_seconds"`
	Error        string  `json:"error,omitempty"`
}

// loadChecked loads the artifact and holds it against the board: nothing
// touches the port before this passes.
func loadChecked(c *cli.Context) (*boards.Board, *flash.Image, error) {
	args, err := trailingFlags(c)
	if err != nil {
		return nil, nil, err
	}
	if len(args) != 1 {
		return nil, nil, usagef("%s: want one ARTIFACT (see kiln %s --help)", c.Command.Name, c.Command.Name)
	}
	if c.String("board") == "" || c.String("port") == "" {
		return nil, nil, usagef("%s: --board and --port are required (see kiln %s --help)", c.Command.Name, c.Command.Name)
	}
	b, err := boards.Get(c.String("board"))
	if err != nil {
		return nil, nil, withHint(err, "kiln boards lists the boards kiln knows")
	}
	var lo flash.LoadOptions
	if s := c.String("address"); s != "" {
		a, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return nil, nil, usagef("--address %q: want a number such as 0x08000000", s)
		}
		a32 := uint32(a)
		lo.Address = &a32
	}
	img, err := flash.Load(args[0], lo)
	if err != nil {
		return nil, nil, withHint(err, "nothing was written: kiln checks the artifact before it opens the port")
	}
	if err := img.Check(b); err != nil {
		return nil, nil, withHint(err, "nothing was written: kiln checks the artifact before it opens the port")
	}
	return b, img, nil
}

func runFlashOrVerify(c *cli.Context, write bool) error {
	e := envOf(c)
	ctx := c.Context
	b, img, err := loadChecked(c)
	if err != nil {
		return err
	}
	// Trust policy and audit log (sign.go, log.go): the policy is checked
	// before any device I/O; every outcome is logged.
	if write {
		if _, err := checkTrust(c, b, img); err != nil {
			return auditFlash(c, write, b, img, flash.Result{}, err)
		}
	}
	protocol := c.String("protocol")
	if protocol == "" {
		protocol = b.Protocol
	}
	port := c.String("port")
	start := time.Now()
	sess, err := openDevice(ctx, port, b, protocol, device.Options{
		Baud: c.Int("baud"),
		Note: func(s string) { fmt.Fprintf(e.stderr, "note: %s\n", s) },
	})
	if err != nil {
		return auditFlash(c, write, b, img, flash.Result{}, diagnose(err, port))
	}
	bar := newProgress(e.stderr, c.Bool("json"))
	var res flash.Result
	if write {
		res, err = flash.Program(ctx, sess, img, bar.Func())
	} else {
		res, err = flash.Verify(ctx, sess, img, bar.Func())
	}
	bar.Done()
	if cerr := sess.Close(); cerr != nil && err == nil && !errors.Is(cerr, context.Canceled) {
		// The image is on the device and proven; a failed goodbye is a note.
		fmt.Fprintf(e.stderr, "note: closing %s: %v\n", port, cerr)
	}
	rep := flashReport{
		Board: b.Name, Port: port, Protocol: protocol, Device: res.Device, Image: img.Source,
		ImageSHA256: img.SHA256(), DeviceSHA256: res.DeviceSHA256, Bytes: img.Size(), Verified: res.Verified && err == nil,
		WriteSec: res.WriteTime.Seconds(), VerifySec: res.VerifyTime.Seconds(), TotalSec: time.Since(start).Seconds(),
	}
	if err != nil {
		rep.Error = err.Error()
	}
	if c.Bool("json") {
		if perr := e.printJSON(rep); perr != nil && err == nil {
			return perr
		}
	} else if err == nil {
		what := "flashed"
		if !write {
			what = "verified"
		}
		dev := ""
		if res.Device != "" {
			dev = " (" + res.Device + ")"
		}
		fmt.Fprintf(e.stdout, "%s %d bytes of %s to %s at %s%s\n", what, img.Size(), img.Source, b.Name, port, dev)
		if write {
			fmt.Fprintf(e.stdout, "verified: sha256 %s read back from the device (write %.2fs, verify %.2fs)\n", res.DeviceSHA256, rep.WriteSec, rep.VerifySec)
		} else {
			fmt.Fprintf(e.stdout, "verified: sha256 %s read back from the device (%.2fs)\n", res.DeviceSHA256, rep.VerifySec)
		}
	}
	if err != nil {
		err = diagnose(err, port)
	}
	return auditFlash(c, write, b, img, res, err)
}

// diagnose adds hints a user can act on to a device error (from the
// back-end table: the CLI knows no protocol).
func diagnose(err error, port string) error {
	if hs := device.Hints(err, port); len(hs) > 0 {
		return withHint(err, hs...)
	}
	return err
}

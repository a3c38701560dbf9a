package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/creack/pty"
	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/device"
)

func init() {
	register(&cli.Command{
		Name:      "emulate",
		Usage:     "serve a board's bootloader emulator on a pseudo-terminal",
		ArgsUsage: "BOARD",
		Description: "Prints \"port: /dev/pts/N\" as its first line, then serves until interrupted. " +
			"Each time a program opens the port the emulated board is reset into its bootloader " +
			"(a pty has no DTR line). With --state, the application flash is loaded from FILE at " +
			"start and saved to it after every programming session and on exit.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state", Usage: "`FILE` holding the emulated application flash"},
			protocolFlag,
			&cli.BoolFlag{Name: "pace", Usage: "deliver bytes at the board's baud rate, as a UART would"},
		},
		Action: runEmulate,
	})
}

func runEmulate(c *cli.Context) error {
	e := envOf(c)
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("emulate: want one BOARD (see kiln emulate --help)")
	}
	b, err := boards.Get(args[0])
	if err != nil {
		return withHint(err, "kiln boards lists the boards kiln knows")
	}
	if p := c.String("protocol"); p != "" && !b.Supports(p) {
		return usagef("emulate: %s does not speak %s (it speaks %s)", b.Name, p, strings.Join(b.Protocols, ", "))
	}
	emu, protocol, err := device.NewEmulator(b, c.String("protocol"), device.EmulatorOptions{Pace: c.Bool("pace")})
	if err != nil {
		return err
	}
	var save func() error
	if path := c.String("state"); path != "" {
		st, ok := emu.(device.Stateful)
		if !ok {
			return fmt.Errorf("emulate: the %s emulator keeps no state", protocol)
		}
		if data, err := os.ReadFile(path); err == nil {
			if err := st.LoadAppFlash(data); err != nil {
				return fmt.Errorf("emulate: load %s: %w", path, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("emulate: %w", err)
		}
		var mu sync.Mutex
		save = func() error {
			mu.Lock()
			defer mu.Unlock()
			return writeAtomic(path, st.AppFlash(), 0o600)
		}
		if err := save(); err != nil {
			return fmt.Errorf("emulate: save state: %w", err)
		}
		st.OnSessionEnd(func() {
			if err := save(); err != nil {
				fmt.Fprintf(e.stderr, "kiln: emulate: save state: %v\n", err)
			}
		})
	}
	ptmx, tty, err := pty.Open()
	if err != nil {
		return fmt.Errorf("emulate: open a pseudo-terminal: %w", err)
	}
	defer ptmx.Close()
	name := tty.Name()
	// Close our side of the terminal: the master then sees a hangup while no
	// program has the port open, which is how an open is noticed.
	tty.Close()
	fmt.Fprintf(e.stdout, "port: %s\n", name)
	fmt.Fprintf(e.stderr, "emulating %s (%s) on %s; interrupt to stop\n", b.Name, protocol, name)
	err = device.ServePTY(c.Context, ptmx, emu)
	if save != nil {
		if serr := save(); serr != nil && err == nil {
			err = fmt.Errorf("emulate: save state: %w", serr)
		}
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// writeAtomic replaces path with data, with permissions perm: written to a
// temporary file beside it, synced, then renamed over it, so a reader (or a
// crash) sees the old file or the new one, never a part.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".kiln-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

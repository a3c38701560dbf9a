// Package cli is kiln's command line: one file per command. It is the only
// package that writes to stdout and stderr.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/trust"
)

// Exit codes (the CLI contract).
const (
	ExitOK        = 0
	ExitFailure   = 1
	ExitUsage     = 2
	ExitVerify    = 3
	ExitUntrusted = 4
)

// ErrUntrusted marks an artifact refused by the trust policy (exit 4): it
// is trust.ErrUntrusted, which every trust check wraps.
var ErrUntrusted = trust.ErrUntrusted

// commands is filled by each command file's init.
var commands []*cli.Command

func register(c *cli.Command) { commands = append(commands, c) }

// hinted is an error with hint lines printed under it.
type hinted struct {
	err   error
	hints []string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// withHint attaches hints to err.
func withHint(err error, hints ...string) error {
	if err == nil {
		return nil
	}
	return &hinted{err: err, hints: hints}
}

// usageError marks a mistake in how kiln was called (exit 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// env is what a command's run function gets.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	json           bool
}

// note prints a remark for the user on stderr ("note: ..."): the
// flash.Note every library is given.
func (e *env) note(format string, a ...any) {
	fmt.Fprintf(e.stderr, "note: "+format+"\n", a...)
}

// printJSON writes v as one JSON object.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func envOf(c *cli.Context) *env {
	return c.App.Metadata["env"].(*env)
}

// Main runs kiln with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	cmds := append([]*cli.Command(nil), commands...)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name < cmds[j].Name })
	app := &cli.App{
		Name:                 "kiln",
		Usage:                "build firmware and SD-card images reproducibly, and flash them with proof",
		Commands:             cmds,
		Writer:               stdout,
		ErrWriter:            stderr,
		Metadata:             map[string]any{"env": e},
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err.Error()}
		},
	}
	usageErrors(app)
	err := app.RunContext(ctx, args)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "kiln: %s\n", oneLine(err.Error()))
	var h *hinted
	if errors.As(err, &h) {
		for _, s := range h.hints {
			fmt.Fprintf(stderr, "hint: %s\n", s)
		}
	}
	return exitCode(err)
}

func exitCode(err error) int {
	var u usageError
	var ec cli.ExitCoder
	switch {
	case errors.As(err, &u):
		return ExitUsage
	case errors.Is(err, flash.ErrVerify):
		return ExitVerify
	case errors.Is(err, ErrUntrusted):
		return ExitUntrusted
	case errors.As(err, &ec):
		return ec.ExitCode()
	}
	return ExitFailure
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// jsonFlag is the --json flag every command that reports shares.
var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of text"}

// argN checks the positional argument count.
func argN(c *cli.Context, n int, what string) error {
	if c.NArg() != n {
		return usagef("%s: want %s (see kiln %s --help)", c.Command.Name, what, c.Command.Name)
	}
	return nil
}

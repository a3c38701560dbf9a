package cli

import (
	"sync"

	"github.com/urfave/cli/v2"
)

// usageErrorsOnce makes urfave/cli's own usage errors kiln's usageError
// where they arise, so exitCode classifies every usage error by type and
// never by message text:
//   - a flag that does not parse: every command's OnUsageError;
//   - a required flag left out: urfave/cli reports it with an unexported
//     type, so kiln checks Required flags itself, in the command's Before;
//   - an unknown command or help topic (urfave/cli's is an exit code 3,
//     kiln's verify failure): the Before of the app and of every command
//     with subcommands.
var usageErrorsOnce sync.Once

func usageErrors(app *cli.App) {
	app.Before = chainBefore(unknownTopic("kiln", func(c *cli.Context, name string) bool { return c.App.Command(name) != nil }), app.Before)
	usageErrorsOnce.Do(func() { commandUsage(app.Commands) })
}

func commandUsage(cmds []*cli.Command) {
	for _, cmd := range cmds {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err.Error()} }
		}
		var required []string
		for _, f := range cmd.Flags {
			switch f := f.(type) {
			case *cli.StringFlag:
				if f.Required {
					f.Required, required = false, append(required, f.Name)
				}
			case *cli.StringSliceFlag:
				if f.Required {
					f.Required, required = false, append(required, f.Name)
				}
			case cli.RequiredFlag:
				if f.IsRequired() {
					panic("kiln: required flag of a type usageErrors does not know: " + f.Names()[0])
				}
			}
		}
		if len(required) > 0 {
			cmd.Before = chainBefore(func(c *cli.Context) error {
				for _, name := range required {
					if !c.IsSet(name) {
						return usagef("%s: --%s is required (see kiln %s --help)", cmd.Name, name, cmd.Name)
					}
				}
				return nil
			}, cmd.Before)
		}
		if len(cmd.Subcommands) > 0 {
			cmd.Before = chainBefore(unknownTopic("kiln "+cmd.Name, func(c *cli.Context, name string) bool { return c.Command.Command(name) != nil }), cmd.Before)
			commandUsage(cmd.Subcommands)
		}
	}
}

// unknownTopic refuses a first argument (or help's argument) that names no
// command.
func unknownTopic(where string, known func(c *cli.Context, name string) bool) cli.BeforeFunc {
	return func(c *cli.Context) error {
		args := c.Args().Slice()
		if len(args) == 0 {
			return nil
		}
		name := args[0]
		if name == "help" || name == "h" {
			if len(args) == 1 {
				return nil
			}
			name = args[1]
		}
		if !known(c, name) {
			return usagef("%s: no command %q (%s help lists them)", where, name, where)
		}
		return nil
	}
}

func chainBefore(first, then cli.BeforeFunc) cli.BeforeFunc {
	if then == nil {
		return first
	}
	return func(c *cli.Context) error {
		if err := first(c); err != nil {
			return err
		}
		return then(c)
	}
}

package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
)

func init() {
	register(&cli.Command{
		Name:   "boards",
		Usage:  "list the boards kiln knows",
		Flags:  []cli.Flag{jsonFlag},
		Action: runBoards,
	})
}

func runBoards(c *cli.Context) error {
	e := envOf(c)
	all, err := boards.All()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"boards": all})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tARCH\tMCU\tFLASH\tPROTOCOLS\tDESCRIPTION")
	for _, b := range all {
		mcu, fl := b.MCU, "-"
		if mcu == "" {
			mcu = b.SoC
		}
		if b.Flash.Size > 0 {
			fl = humanBytes(int64(b.Flash.Size))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, b.Arch, mcu, fl, strings.Join(b.Protocols, ","), b.Description)
	}
	return tw.Flush()
}

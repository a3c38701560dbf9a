package cli

import "github.com/urfave/cli/v2"

func init() {
	register(&cli.Command{
		Name:      "verify",
		Usage:     "read an artifact's extent back from a board and compare hashes, without writing",
		ArgsUsage: "ARTIFACT (.hex, .elf, .bin with --address, or a build output directory)",
		Flags:     []cli.Flag{boardFlag, portFlag, protocolFlag, addressFlag, baudFlag, jsonFlag, logFlag},
		Action: func(c *cli.Context) error {
			return runFlashOrVerify(c, false)
		},
	})
}

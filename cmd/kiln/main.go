// Command kiln builds firmware and SD-card images as reproducible derivations
// and writes them to hardware with proof.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"kiln.dev/kiln/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

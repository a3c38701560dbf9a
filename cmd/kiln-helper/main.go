// Command kiln-helper is the small static program kiln uploads to a device
// (checked by SHA-256 before every run) to hash and patch blocks in one
// process during SSH delta updates.
package main

import (
	"fmt"
	"os"

	"kiln.dev/kiln/flash/sshdev/devhelper"
)

func main() {
	if err := devhelper.Main(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-helper:", err)
		os.Exit(1)
	}
}

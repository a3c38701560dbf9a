// Command buildweed builds (once) the SeaweedFS binary the binary-cache
// tests run, outside the checkout ($HOME/.cache/kiln-test/seaweedfs-VERSION),
// and prints its path. `make test` runs it before the tests.
package main

import (
	"context"
	"fmt"
	"os"

	"kiln.dev/kiln/internal/cache/cachetest"
)

func main() {
	p, err := cachetest.BuildWeed(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildweed:", err)
		os.Exit(1)
	}
	fmt.Println(p)
}

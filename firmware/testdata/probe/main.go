// Command probe tries to open a TCP connection to the address in its first
// argument. The firmware tests run it as a pre command inside the build
// sandbox, which has no network: it must fail.
package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: probe HOST:PORT")
		os.Exit(2)
	}
	c, err := net.DialTimeout("tcp", os.Args[1], 3*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: no connection: %v\n", err)
		os.Exit(1)
	}
	c.Close()
	fmt.Println("probe: connected to", os.Args[1])
}

// Command probe is run by the firmware tests as a pre command inside the
// build sandbox.
//
//	probe HOST:PORT   tries to open a TCP connection (the sandbox has no
//	                  network: it must fail)
//	probe write FILE  writes a C header defining RANDOM_VALUE as a fresh
//	                  random number (a deliberately unreproducible build)
package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "write":
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
		v := binary.LittleEndian.Uint32(b[:])
		if err := os.WriteFile(os.Args[2], []byte(fmt.Sprintf("#define RANDOM_VALUE 0x%08xu\n", v)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
	case len(os.Args) == 2:
		c, err := net.DialTimeout("tcp", os.Args[1], 3*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "probe: no connection: %v\n", err)
			os.Exit(1)
		}
		c.Close()
		fmt.Println("probe: connected to", os.Args[1])
	default:
		fmt.Fprintln(os.Stderr, "usage: probe HOST:PORT | probe write FILE")
		os.Exit(2)
	}
}

// Command probe is run by the firmware tests as a pre command inside the
// build sandbox.
//
//	probe HOST:PORT   tries to open a TCP connection (the sandbox has no
//	                  network: it must fail)
//	probe write FILE  writes a C header defining RANDOM_VALUE as a fresh
//	                  random number (a deliberately unreproducible build)
//	probe look PATH…  reports each PATH it can see ("visible: PATH") and
//	                  each it can write ("writable: PATH"; for a directory,
//	                  a new file in it), lists /, then exits 1 (stopping
//	                  the build, whose error carries this output)
package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
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
	case len(os.Args) >= 2 && os.Args[1] == "look":
		for _, p := range os.Args[2:] {
			fi, err := os.Lstat(p)
			if err != nil {
				fmt.Printf("hidden: %s\n", p)
				continue
			}
			fmt.Printf("visible: %s\n", p)
			target := p
			if fi.IsDir() {
				target = filepath.Join(p, ".probe-write")
			}
			if f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
				f.Close()
				if fi.IsDir() {
					os.Remove(target)
				}
				fmt.Printf("writable: %s\n", p)
			} else {
				fmt.Printf("read-only: %s\n", p)
			}
		}
		ents, _ := os.ReadDir("/")
		for _, e := range ents {
			fmt.Printf("root: /%s\n", e.Name())
		}
		fmt.Println("probe: look done")
		os.Exit(1)
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

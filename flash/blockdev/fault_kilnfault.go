//go:build kilnfault

package blockdev

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// KILN_FAULT_BLOCKDEV_CORRUPT=OFFSET: after writing, overwrite 4 KiB of the
// device at OFFSET (a multiple of 4096) with 0xee, as a failing card that
// lost the write would hold.
func init() {
	s := os.Getenv("KILN_FAULT_BLOCKDEV_CORRUPT")
	off, err := strconv.ParseInt(s, 0, 64)
	if s == "" || err != nil {
		return
	}
	faultBeforeVerify = func(dev string) error {
		f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		junk := alignedBuf(4096)
		for i := range junk {
			junk[i] = 0xee
		}
		_, err = f.WriteAt(junk, off)
		return err
	}
}

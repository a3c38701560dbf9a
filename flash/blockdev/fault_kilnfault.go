//go:build kilnfault

package blockdev

import (
	"os"
	"strconv"
)

// KILN_FAULT_BLOCKDEV_CORRUPT=OFFSET: after writing, overwrite 4 KiB of the
// device at OFFSET (a multiple of 4096) with 0xee (corrupt).
func init() {
	s := os.Getenv("KILN_FAULT_BLOCKDEV_CORRUPT")
	off, err := strconv.ParseInt(s, 0, 64)
	if s == "" || err != nil {
		return
	}
	faultBeforeVerify = func(dev string) error { return corrupt(dev, off) }
}

package blockdev

import (
	"os"

	"golang.org/x/sys/unix"
)

// faultBeforeVerify, when set, runs before every read-back (HashDisk), so
// between the write and its proof, whichever path drove the write (Write,
// or flash.WriteDisk over an Open'd Target from the CLI). It is the
// package's one fault hook: a kiln built with -tags kilnfault sets it from
// the environment (fault_kilnfault.go), so that tests can corrupt the
// "card" through the real binary, and this package's tests set it
// directly; release builds have no way to set it.
var faultBeforeVerify func(dev string) error

// corrupt overwrites 4 KiB of the device at off (a multiple of 4096) with
// 0xee, past the page cache, as a failing card that lost the write would
// hold.
func corrupt(dev string, off int64) error {
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

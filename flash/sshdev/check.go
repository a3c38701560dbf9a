package sshdev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"kiln.dev/kiln/flash/ssh"
)

// SlotCheck compares what a device's running slot holds, hashed on the
// device, with what an update from an image would have written there.
type SlotCheck struct {
	Device     string `json:"device"`
	Slot       string `json:"slot"`
	Root       int    `json:"root_partition"`
	Boot       int    `json:"boot_partition"`
	RootSHA256 string `json:"root_sha256"` // the device's, over the image's root length
	BootSHA256 string `json:"boot_sha256"`
	WantRoot   string `json:"want_root_sha256"`
	WantBoot   string `json:"want_boot_sha256"`
	Match      bool   `json:"match"`
}

// Check proves what a device runs: it hashes the running slot's root and
// boot partitions on the device (past the page cache, over the image's
// lengths) and compares them with the image's slot as Update writes it —
// the boot partition with cmdline.txt naming the device's root. A slot whose
// kiln.json claims the image but whose bytes differ does not match.
func Check(ctx context.Context, dial ssh.Dialer, name, dsk, path string) (*SlotCheck, error) {
	if dsk == "" {
		dsk = "/dev/mmcblk0"
	}
	f, img, err := openImage(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	srcBoot, srcRoot := img.Boot, img.Root
	c, rem, err := connect(ctx, dial, dsk)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	d := rem.d
	res := &SlotCheck{Device: name, Slot: rem.running.Name, Root: rem.running.Root, Boot: rem.running.Boot}
	tBoot, ok1 := rem.tbl.Partition(rem.running.Boot)
	tRoot, ok2 := rem.tbl.Partition(rem.running.Root)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("%s: %w: slot %s partitions missing", name, ErrLayout, rem.running.Name)
	}
	if srcBoot.Size > tBoot.Size || srcRoot.Size > tRoot.Size {
		return res, nil // it cannot hold the image: no match
	}
	boot, err := img.SlotBoot(tRoot.PartUUID)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(boot)
	res.WantBoot = hex.EncodeToString(sum[:])
	lc := make(chan localHashes, 1)
	go func() {
		lc <- hashLocal(img.RootReader(), srcRoot.Size, 1<<20, false)
	}()
	res.RootSHA256, err = d.hash(ctx, partDev(dsk, tRoot.Number), 0, srcRoot.Size)
	if err == nil {
		res.BootSHA256, err = d.hash(ctx, partDev(dsk, tBoot.Number), 0, srcBoot.Size)
	}
	l := <-lc
	if err != nil {
		return nil, err
	}
	if l.err != nil {
		return nil, l.err
	}
	res.WantRoot = l.sum
	res.Match = res.RootSHA256 == res.WantRoot && res.BootSHA256 == res.WantBoot
	return res, nil
}

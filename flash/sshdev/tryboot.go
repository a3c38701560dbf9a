package sshdev

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"kiln.dev/kiln/image/disk"
)

// tryboot is the Raspberry Pi firmware's A/B mechanism: autoboot.txt on
// partition 1 names the committed boot partition in [all] and the trial's
// in [tryboot]; `reboot '0 tryboot'` sets a one-shot flag that makes the
// next boot, and only it, use [tryboot].
type tryboot struct{}

func (tryboot) committed(ctx context.Context, rem *remote) (int, error) {
	f, err := disk.ReadFile(rem.p1, "autoboot.txt", 4096)
	if err != nil {
		return 0, fmt.Errorf("%s: autoboot.txt: %w", rem.disk, err)
	}
	rem.autoboot = f
	all, _, err := parseAutoboot(f.Data)
	return all, err
}

func (tryboot) arm(ctx context.Context, rem *remote, committed, trial disk.Slot) error {
	return rem.setAutoboot(ctx, committed.Boot, trial.Boot)
}

func (tryboot) commit(ctx context.Context, rem *remote, slot, previous disk.Slot) error {
	return rem.setAutoboot(ctx, slot.Boot, previous.Boot)
}

func (tryboot) rebootCmd(trial bool) string {
	if trial {
		return "reboot " + quote("0 tryboot")
	}
	return "reboot"
}

// parseAutoboot returns boot_partition in [all] and in [tryboot].
func parseAutoboot(b []byte) (all, try int, err error) {
	section := "all"
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case strings.HasPrefix(line, "boot_partition="):
			n, e := strconv.Atoi(strings.TrimPrefix(line, "boot_partition="))
			if e != nil {
				return 0, 0, fmt.Errorf("autoboot.txt: bad %q", line)
			}
			if section == "tryboot" {
				try = n
			} else {
				all = n
			}
		}
	}
	if all == 0 {
		return 0, 0, fmt.Errorf("autoboot.txt: no boot_partition in [all]")
	}
	return all, try, nil
}

// autobootText is kiln's autoboot.txt. Its length does not depend on the
// (single-digit) partition numbers, so rewriting it changes bytes in place
// inside one sector.
func autobootText(all, try int) string {
	return fmt.Sprintf("[all]\ntryboot_a_b=1\nboot_partition=%d\n[tryboot]\nboot_partition=%d\n", all, try)
}

// setAutoboot rewrites autoboot.txt in place and reads it back.
func (r *remote) setAutoboot(ctx context.Context, all, try int) error {
	want := autobootText(all, try)
	if len(want) != len(r.autoboot.Data) {
		return fmt.Errorf("autoboot.txt is %d bytes, kiln's is %d: cannot rewrite it in place", len(r.autoboot.Data), len(want))
	}
	if string(r.autoboot.Data) == want {
		return nil
	}
	dev := partDev(r.disk, 1)
	pos := int64(0)
	var blocks []block
	for _, x := range r.autoboot.Extents {
		blocks = append(blocks, block{Off: x.Off, Data: []byte(want[pos : pos+x.Len])})
		pos += x.Len
	}
	if err := r.d.writeBlocks(ctx, dev, blocks); err != nil {
		return fmt.Errorf("rewrite autoboot.txt: %w", err)
	}
	for _, b := range blocks {
		got, err := r.d.readAt(ctx, dev, b.Off, int64(len(b.Data)))
		if err != nil {
			return fmt.Errorf("read back autoboot.txt: %w", err)
		}
		if !bytes.Equal(got, b.Data) {
			return fmt.Errorf("read back autoboot.txt: content differs")
		}
	}
	r.autoboot.Data = []byte(want)
	return nil
}

package sshdev

import (
	"context"
	"fmt"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/image/disk"
)

// ubootEnv is the A/B of Pi 3-class boards (boards.ABUBootEnv): U-Boot,
// started by the firmware, runs kiln's boot.scr, which boots boot_slot of
// uboot.env on partition 1 and counts the boots of a trial
// (upgrade_available, bootcount, bootlimit), returning to boot_fallback by
// itself past the limit. kiln arms, commits and cancels trials by
// rewriting uboot.env in place (flash/ab's UBootArm, UBootCommit,
// UBootDisarm: the sectors that change, the CRC's last, read back past the
// page cache and compared), in the format fw_setenv writes. A plain reboot
// is all U-Boot needs: there is no one-shot flag.
type ubootEnv struct{}

func (ubootEnv) committed(ctx context.Context, rem *remote) (int, error) {
	f, err := disk.ReadFile(rem.p1, "uboot.env", 1<<20)
	if err != nil {
		return 0, fmt.Errorf("%s: uboot.env: %w", rem.disk, err)
	}
	rem.env = f
	name, err := ab.UBootCommitted(f.Data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w (U-Boot ignores such a file and boots slot %s with its default environment; rewrite it with fw_setenv on the device, or flash the card again)",
			rem.disk, err, rem.layout.Slots[0].Name)
	}
	for _, s := range rem.layout.Slots {
		if s.Name == name {
			return s.Boot, nil
		}
	}
	return 0, fmt.Errorf("%s: %w: uboot.env boots slot %q, which kiln.json does not list", rem.disk, ErrLayout, name)
}

func (ubootEnv) arm(ctx context.Context, rem *remote, committed, trial disk.Slot) error {
	return ab.UBootArm(ctx, envOnDevice{rem}, committed.Name, trial.Name)
}

func (ubootEnv) commit(ctx context.Context, rem *remote, slot, _ disk.Slot) error {
	return ab.UBootCommit(ctx, envOnDevice{rem}, slot.Name)
}

// disarm runs before a plain reboot: U-Boot would boot a pending trial
// again, so the next boot is made the committed slot's.
func (ubootEnv) disarm(ctx context.Context, rem *remote) error {
	return ab.UBootDisarm(ctx, envOnDevice{rem})
}

func (ubootEnv) rebootCmd(bool) string { return "reboot" }

// envOnDevice is uboot.env where inspection found it: its clusters on
// partition 1, read and written with the device's dd, past the cache.
type envOnDevice struct{ rem *remote }

var _ ab.EnvFile = envOnDevice{}

func (e envOnDevice) ReadEnv(ctx context.Context) ([]byte, error) {
	out := make([]byte, 0, len(e.rem.env.Data))
	dev := partDev(e.rem.disk, 1)
	for _, x := range e.rem.env.Extents {
		b, err := e.rem.d.readAt(ctx, dev, x.Off, x.Len)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

func (e envOnDevice) WriteEnv(ctx context.Context, chunks []ab.EnvChunk) error {
	var blocks []block
	for _, c := range chunks {
		// A chunk (a sector) may straddle two clusters of the file.
		pos, data, off := int64(0), c.Data, c.Off
		for _, x := range e.rem.env.Extents {
			if len(data) == 0 {
				break
			}
			if off >= pos && off < pos+x.Len {
				n := min(int64(len(data)), pos+x.Len-off)
				blocks = append(blocks, block{Off: x.Off + off - pos, Data: data[:n]})
				data, off = data[n:], off+n
			}
			pos += x.Len
		}
		if len(data) != 0 {
			return fmt.Errorf("write of %d bytes at %d: past the end of uboot.env", len(c.Data), c.Off)
		}
	}
	return e.rem.d.writeBlocks(ctx, partDev(e.rem.disk, 1), blocks)
}

package ab

import (
	"bytes"
	"context"
	"fmt"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image/uboot"
)

// EnvFile is U-Boot's environment file (uboot.env on a Raspberry Pi's
// first partition) on a device's medium. A Device whose boot loader is
// U-Boot implements its boot control with UBootCommitted, UBootArm,
// UBootCommit and UBootDisarm over it.
type EnvFile interface {
	// ReadEnv reads the whole file from the medium (not from a cache).
	ReadEnv(ctx context.Context) ([]byte, error)
	// WriteEnv writes each chunk at its offset in the file, in place and in
	// order.
	WriteEnv(ctx context.Context, chunks []EnvChunk) error
}

// EnvChunk is bytes at an offset of the environment file.
type EnvChunk struct {
	Off  int64
	Data []byte
}

// sectorSize is the unit a card writes; kiln writes whole changed sectors.
const sectorSize = 512

// UBootCommitted returns the slot U-Boot boots once no trial is pending:
// boot_fallback while a trial is armed or running (upgrade_available=1),
// else boot_slot. A file with a bad CRC wraps uboot.ErrBadCRC: U-Boot
// ignores such a file, and kiln's boot.scr then boots the image's first
// slot with U-Boot's default environment.
func UBootCommitted(env []byte) (string, error) {
	vars, err := uboot.DecodeEnv(env)
	if err != nil {
		return "", fmt.Errorf("uboot.env: %w", err)
	}
	s := vars[uboot.VarSlot]
	if vars[uboot.VarTrial] == "1" {
		s = vars[uboot.VarFallback]
	}
	if s == "" {
		return "", fmt.Errorf("uboot.env: %w: no %s: not kiln's U-Boot A/B environment", uboot.ErrBadEnv, uboot.VarSlot)
	}
	return s, nil
}

// UBootArm makes U-Boot boot slot trial on the next boots, at most
// bootlimit of them unless the system there is marked good (UBootCommit),
// then fall back to committed by itself. The environment must commit slot
// committed; a trial armed earlier and never booted (its update lost) is
// replaced.
func UBootArm(ctx context.Context, f EnvFile, committed, trial string) error {
	return rewriteEnv(ctx, f, "arm a trial of slot "+trial, func(vars map[string]string) error {
		cur := vars[uboot.VarSlot]
		if vars[uboot.VarTrial] == "1" {
			cur = vars[uboot.VarFallback]
		}
		if cur != committed {
			return fmt.Errorf("it commits slot %q, not %q", cur, committed)
		}
		vars[uboot.VarSlot], vars[uboot.VarTrial] = committed, "0"
		return uboot.ArmTrial(vars, trial)
	})
}

// UBootCommit makes slot the one U-Boot boots, with no trial pending: what
// `fw_setenv upgrade_available 0; fw_setenv bootcount 0` does on a device
// running slot, plus boot_slot itself.
func UBootCommit(ctx context.Context, f EnvFile, slot string) error {
	return rewriteEnv(ctx, f, "commit slot "+slot, func(vars map[string]string) error {
		if vars[uboot.VarSlot] != slot && vars[uboot.VarTrial] == "1" {
			// U-Boot fell back while kiln was away: committing slot now
			// would commit a slot that failed its trial.
			return fmt.Errorf("%w: U-Boot's trial is of slot %q, not %q", ErrRolledBack, vars[uboot.VarSlot], slot)
		}
		vars[uboot.VarSlot] = slot
		uboot.MarkGood(vars)
		return nil
	})
}

// UBootDisarm makes the next boot start boot_fallback, the slot the last
// update started from: a trial pending or running is cancelled, and so is
// one that its system marked good itself (fw_setenv upgrade_available 0)
// before kiln committed it. After kiln's commit the fallback is the slot
// itself, and nothing changes.
func UBootDisarm(ctx context.Context, f EnvFile) error {
	return rewriteEnv(ctx, f, "return to the fallback slot", func(vars map[string]string) error {
		if vars[uboot.VarFallback] == "" {
			return fmt.Errorf("%w: no %s", uboot.ErrBadEnv, uboot.VarFallback)
		}
		vars[uboot.VarSlot] = vars[uboot.VarFallback]
		uboot.MarkGood(vars)
		return nil
	})
}

// rewriteEnv reads the environment, changes it with mod, writes the
// sectors that differ (the first, holding the CRC, last) and reads the
// file back: it must be byte for byte what kiln encoded, as fw_setenv
// would have written it.
func rewriteEnv(ctx context.Context, f EnvFile, what string, mod func(map[string]string) error) error {
	old, err := f.ReadEnv(ctx)
	if err != nil {
		return fmt.Errorf("uboot.env: %s: read: %w", what, err)
	}
	vars, err := uboot.DecodeEnv(old)
	if err != nil {
		return fmt.Errorf("uboot.env: %s: %w", what, err)
	}
	if err := mod(vars); err != nil {
		return fmt.Errorf("uboot.env: %s: %w", what, err)
	}
	want, err := uboot.EncodeEnv(vars, len(old))
	if err != nil {
		return fmt.Errorf("uboot.env: %s: %w", what, err)
	}
	var chunks []EnvChunk
	for off := 0; off < len(want); off += sectorSize {
		end := min(off+sectorSize, len(want))
		if !bytes.Equal(old[off:end], want[off:end]) {
			chunks = append(chunks, EnvChunk{Off: int64(off), Data: want[off:end]})
		}
	}
	if len(chunks) == 0 {
		return nil
	}
	if chunks[0].Off == 0 {
		// The CRC goes last: until it lands, U-Boot sees a bad CRC at worst,
		// never a good CRC over half-old data.
		chunks = append(chunks[1:], chunks[0])
	}
	if err := f.WriteEnv(ctx, chunks); err != nil {
		return fmt.Errorf("uboot.env: %s: write: %w", what, err)
	}
	got, err := f.ReadEnv(ctx)
	if err != nil {
		return fmt.Errorf("uboot.env: %s: read back: %w", what, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("uboot.env: %s: read back differs from what was written: %w", what, flash.ErrVerify)
	}
	return nil
}

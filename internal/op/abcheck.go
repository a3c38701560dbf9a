package op

import (
	"fmt"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/sshdev"
)

// checkAB refuses an A/B image whose mechanism (kiln.json's "ab") the
// board's boot firmware does not have — U-Boot's environment on a Pi 4,
// say — before a byte goes out: kiln update would arm a trial nothing on
// the device reads. The error wraps boards.ErrNoABMechanism and
// flash.ErrBadImage.
func checkAB(a *Artifact, board string) error {
	l, err := sshdev.ImageLayout(a.DiskPath())
	if err != nil || l.AB == "" || board == "" {
		return nil // no A/B layout: the update itself says so
	}
	b, err := boards.Get(board)
	if err != nil {
		return err
	}
	if err := b.HasAB(l.AB); err != nil {
		return fmt.Errorf("%w: %s: %w", flash.ErrBadImage, a.Path, err)
	}
	return nil
}

package sshdev

import (
	"context"
	"fmt"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/image/disk"
)

// bootControl is how a device picks the slot it boots: the state machine
// (flash/ab) asks it to arm a one-shot trial, to reboot into it and to
// commit: tryboot (the Raspberry Pi firmware's autoboot.txt) or ubootEnv
// (U-Boot's environment with a boot counter). bootFor picks one by the
// mechanism kiln.json names.
type bootControl interface {
	// committed returns the boot partition of the committed slot, read
	// during inspection.
	committed(ctx context.Context, rem *remote) (int, error)
	arm(ctx context.Context, rem *remote, committed, trial disk.Slot) error
	commit(ctx context.Context, rem *remote, slot, previous disk.Slot) error
	rebootCmd(trial bool) string
}

// bootFor returns the boot control for an A/B mechanism as kiln.json's
// "ab" names it (boards.ABTryboot; "" is an image without that field, which
// uses autoboot.txt too). Every mechanism is a bootControl in a file of its
// own; this is the one place that chooses between them.
func bootFor(mechanism string) (bootControl, error) {
	switch mechanism {
	case "", boards.ABTryboot:
		return tryboot{}, nil
	case boards.ABUBootEnv:
		return ubootEnv{}, nil
	}
	return nil, fmt.Errorf("%w: its A/B is %q; kiln update knows %s and %s", ErrLayout, mechanism, boards.ABTryboot, boards.ABUBootEnv)
}

// disarmer is a bootControl whose boot loader would boot a pending trial
// again at a plain reboot (a boot counter allows several): disarm makes
// the next boot the committed slot's. The device runs it before a reboot
// that is not into a trial.
type disarmer interface {
	disarm(ctx context.Context, rem *remote) error
}

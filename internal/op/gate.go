package op

import (
	"errors"
	"fmt"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/trust"
)

// ErrUntrusted is trust.ErrUntrusted: the policy refuses the artifact
// (exit code 4 in the CLI).
var ErrUntrusted = trust.ErrUntrusted

// ErrWrongBoard means the artifact was built for another board than the
// one it is about to be written to. It wraps flash.ErrBadImage.
var ErrWrongBoard = fmt.Errorf("%w: built for another board", flash.ErrBadImage)

// Trust is the one trust gate: every path that writes a device calls it
// before any device I/O. It checks the artifact's own bytes (never the
// path again) against pol for the target; the target's board defaults to
// the artifact's own, and an unknown board matches every board rule. A nil
// policy requires nothing. Refusals wrap ErrUntrusted.
func Trust(pol *trust.Policy, a *Artifact, t trust.Target) (*trust.Decision, error) {
	if pol == nil {
		return &trust.Decision{}, nil
	}
	if t.Board == "" {
		t.Board = a.Board
	}
	r, err := a.signed()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	d, err := pol.Check(t, a.Path, r, a.Sig)
	if err != nil {
		if !errors.Is(err, trust.ErrUntrusted) {
			err = fmt.Errorf("%w: %w", trust.ErrUntrusted, err)
		}
		return nil, err
	}
	return d, nil
}

// Board resolves the board an artifact goes to: the one named, else the
// artifact's own. It is an error when neither says.
func Board(name string, a *Artifact) (*boards.Board, error) {
	if name == "" {
		name = a.Board
	}
	if name == "" {
		return nil, fmt.Errorf("%w: %s does not say which board it is for (no manifest.json listing it beside it, no kiln.json in it)", ErrNoBoard, a.Path)
	}
	return boards.Get(name)
}

// ErrNoBoard means neither the caller nor the artifact names the board.
var ErrNoBoard = errors.New("no board")

// CheckBoard refuses an artifact built for another board than b, before
// any device is opened: the artifact's own board (its manifest or
// kiln.json) must be b or the same chip, and firmware must fit b (inside
// its application flash, clear of the bootloader, built for its CPU and,
// on AVR, its architecture: avr5 firmware is not avr6's).
func CheckBoard(a *Artifact, b *boards.Board) error {
	if a.Board != "" && a.Board != b.Name {
		ab, err := boards.Get(a.Board)
		if err != nil || !sameChip(ab, b) {
			return fmt.Errorf("%w: %s was built for %s, not %s", ErrWrongBoard, a.Path, a.Board, b.Name)
		}
	}
	if a.Kind == Firmware {
		if err := a.Image.Check(b); err != nil {
			return err
		}
	}
	return nil
}

// sameChip reports whether firmware for x runs unchanged on y (an Arduino
// Nano is an Uno's chip, bootloader and flash).
func sameChip(x, y *boards.Board) bool {
	if x.Arch != y.Arch || x.MCU != y.MCU || x.SoC != y.SoC || x.Flash != y.Flash || x.Signature != y.Signature {
		return false
	}
	if (x.Bootloader == nil) != (y.Bootloader == nil) || (x.Bootloader != nil && *x.Bootloader != *y.Bootloader) {
		return false
	}
	return x.Arch == "avr" || x.Arch == "cortex-m"
}

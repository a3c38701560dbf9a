package dfu

import (
	"context"
	"fmt"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// CheckBoard holds the device's memories against board b: the board's
// application flash must lie in one memory whose sectors start where the
// board's erase units (boards.Memory.Pages) start. A device that differs is
// not the board asked for (flash.ErrWrongDevice).
func (t *Target) CheckBoard(b *boards.Board) error {
	pages, err := b.Flash.Pages()
	if err != nil {
		return err
	}
	for _, p := range pages {
		m, s, ok := t.locate(p.Base)
		if !ok || s.Addr != p.Base || s.Size != p.Size || !s.Writable {
			got := "nothing"
			if ok {
				got = fmt.Sprintf("sector 0x%08x+%d (%s) of %q", s.Addr, s.Size, s.Rights(), m.Name)
			}
			return fmt.Errorf("dfu: %v: %s's flash unit 0x%08x+%d is %s on the device (%s): %w",
				t.desc, b.Name, p.Base, p.Size, got, t.memList(), flash.ErrWrongDevice)
		}
	}
	return nil
}

// OpenBoard opens the DfuSe device of board b at port ("dfu:[VID:PID]
// [,serial=S]", or "auto" for the only DFU device present) and checks its
// memories against the board. The target leaves DFU mode on Close once a
// write has been read back unchanged.
func OpenBoard(ctx context.Context, port string, b *boards.Board) (*Target, error) {
	switch {
	case port == "auto":
		port = "dfu:"
	case !strings.HasPrefix(port, "dfu:"):
		return nil, fmt.Errorf("dfu: port %q: %s flashes over USB DFU here: give --port dfu:[VID:PID][,serial=S], auto or emu:%s", port, b.Name, b.Name)
	}
	t, err := Open(ctx, port)
	if err != nil {
		return nil, err
	}
	if err := t.CheckBoard(b); err != nil {
		t.Close()
		return nil, err
	}
	t.LeaveWhenProven = true
	return t, nil
}

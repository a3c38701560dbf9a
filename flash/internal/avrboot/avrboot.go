// Package avrboot holds what kiln's clients for AVR serial bootloaders
// (stk500, stk500v2) share: connecting with resets and tries, checking the
// device's signature, and the line's timing.
package avrboot

import (
	"context"
	"errors"
	"fmt"
	"time"

	"kiln.dev/kiln/flash"
)

// WireTime returns how long n bytes take on a line at baud (10 bits a byte).
func WireTime(baud, n int) time.Duration {
	return time.Duration(n) * 10 * time.Second / time.Duration(baud)
}

// Sync makes up to tries attempts to reach the bootloader. Each attempt
// pulses reset (when reset is not nil), discards what l holds, and calls
// attempt with the extra time the first answer after a reset may take:
// bootTime, or 0 when there is no reset. pkg prefixes errors.
func Sync(ctx context.Context, pkg string, l *flash.Link, tries int, reset func(context.Context) error, bootTime time.Duration, attempt func(boot time.Duration) error) error {
	var last error
	for try := 1; try <= tries; try++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if reset != nil {
			if err := reset(ctx); err != nil {
				return fmt.Errorf("%s: reset: %w", pkg, err)
			}
		}
		l.Discard()
		var boot time.Duration
		if reset != nil {
			boot = bootTime
		}
		if err := attempt(boot); err != nil {
			last = err
			continue
		}
		return nil
	}
	if errors.Is(last, flash.ErrNoAnswer) {
		return fmt.Errorf("%s: no answer from bootloader after %d tries: %w", pkg, tries, last)
	}
	return fmt.Errorf("%s: no answer from bootloader after %d tries: %w (last answer: %v)", pkg, tries, flash.ErrNoAnswer, last)
}

// CheckSignature refuses a device whose signature got is not the board's
// (flash.ErrWrongDevice). A zero want accepts any device.
func CheckSignature(pkg string, got, want [3]byte) error {
	if want != [3]byte{} && got != want {
		return fmt.Errorf("%s: device signature %02x%02x%02x is not the board's %02x%02x%02x: %w",
			pkg, got[0], got[1], got[2], want[0], want[1], want[2], flash.ErrWrongDevice)
	}
	return nil
}

// WordSpan is the flash to read for r in whole 16-bit words: from r's start
// rounded down to even to its end rounded up to even.
func WordSpan(r flash.Region) (start uint32, end uint64) {
	start = r.Addr &^ 1
	end = uint64(r.Addr) + uint64(r.Size)
	if end%2 == 1 {
		end++
	}
	return start, end
}

package sim

import (
	"context"
	"fmt"
	"strings"
	"time"

	"kiln.dev/kiln/internal/simavr"
)

// runAVR runs the image (and bootloader) on simavr's core for the board's
// MCU at its cpu_hz.
func runAVR(ctx context.Context, opts Options) (*Result, error) {
	b := opts.Board
	hz := b.CPUHz
	cycles := func(d time.Duration) uint64 {
		return uint64(d/time.Second)*uint64(hz) + uint64(d%time.Second)*uint64(hz)/1e9
	}
	at := func(c uint64) time.Duration {
		return time.Duration(c/uint64(hz))*time.Second + time.Duration(c%uint64(hz)*1e9/uint64(hz))
	}

	size := b.Flash.End()
	if bl := b.Bootloader; bl != nil && bl.End() > size {
		size = bl.End()
	}
	flat := make([]byte, size)
	for i := range flat {
		flat[i] = 0xff // erased flash
	}
	for _, s := range opts.Artifact.Image.Segments {
		copy(flat[s.Addr:], s.Data)
	}
	ro := simavr.RunOptions{
		MCU: b.MCU, Hz: hz, Boot: -1, Cycles: cycles(opts.For), Pins: opts.Pins, Flash: flat,
		RX: opts.Input, RXStart: cycles(opts.InputAt), ADC: opts.ADC, Inputs: opts.Drive, Stderr: opts.Stderr,
	}
	if opts.Realtime {
		ro.Speed = 1
	}
	if bl := opts.Bootloader; bl != nil {
		if b.Bootloader == nil {
			return nil, fmt.Errorf("sim: %s: %w: the board has no bootloader area", b.Name, ErrUnsupported)
		}
		for _, s := range bl.Segments {
			if !b.Bootloader.Contains(s.Addr, len(s.Data)) {
				return nil, fmt.Errorf("sim: bootloader %s: segment 0x%x-0x%x is outside %s's bootloader area 0x%x-0x%x",
					bl.Source, s.Addr, s.End(), b.Name, b.Bootloader.Base, b.Bootloader.End())
			}
			copy(flat[s.Addr:], s.Data)
		}
		ro.Boot = int64(b.Bootloader.Base)
	}
	for _, p := range opts.Pins {
		if !validPin(p) {
			return nil, fmt.Errorf("sim: pin %q: want a port pin such as PB5", p)
		}
	}
	for p := range opts.Drive {
		if !validPin(p) {
			return nil, fmt.Errorf("sim: pin %q: want a port pin such as PD2", p)
		}
	}
	res := &Result{
		Engine: "simavr " + b.MCU, Board: b.Name, ImageSHA256: opts.Artifact.Image.SHA256(), AppAt: -1,
		Clock: fmt.Sprintf("%s core cycles at %d Hz", b.MCU, hz),
	}
	end, err := simavr.RunFirmware(ctx, ro, func(ev simavr.Event) {
		switch ev.Kind {
		case simavr.EventUART:
			res.UART = append(res.UART, ev.Byte)
			res.Frames = append(res.Frames, Frame{At: at(ev.Cycle), Byte: ev.Byte, Bit: at(ev.BitCycles), Bits: ev.Bits})
			if opts.UART != nil {
				opts.UART.Write([]byte{ev.Byte})
			}
		case simavr.EventPin:
			pc := PinChange{At: at(ev.Cycle), Pin: ev.Pin, Level: ev.Level}
			res.Pins = append(res.Pins, pc)
			if opts.Pin != nil {
				opts.Pin(pc)
			}
		case simavr.EventApp:
			if res.AppAt < 0 {
				res.AppAt = at(ev.Cycle)
			}
		case simavr.EventReset:
			res.Resets++
		case simavr.EventHalt:
			res.Halted = fmt.Sprintf("%s at 0x%x after %v", ev.Reason, ev.PC, at(ev.Cycle))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("sim: %s: %w", b.Name, err)
	}
	res.Simulated, res.Wall, res.Overruns = at(end.Cycles), end.Wall, end.Overruns
	return res, nil
}

// validPin accepts an AVR port pin name: P, a port letter A-L, a bit 0-7.
func validPin(p string) bool {
	return len(p) == 3 && p[0] == 'P' && p[1] >= 'A' && p[1] <= 'L' && p[2] >= '0' && p[2] <= '7' && !strings.ContainsAny(p, " ,")
}

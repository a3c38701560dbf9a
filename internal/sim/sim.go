package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
)

// Sentinel errors, returned wrapped with the detail.
var (
	// ErrNoModel: the board has no simulator model kiln can run it on.
	ErrNoModel = errors.New("no simulator model for the board")
	// ErrWrongBoard: the image was built for another board or MCU.
	ErrWrongBoard = errors.New("firmware for another board")
	// ErrUnsupported: the model cannot do what the run asks (observe pins
	// under QEMU, a bootloader on a Cortex-M model).
	ErrUnsupported = errors.New("not supported by the board's simulator")
)

// Options say what to run, on what, and for how long.
type Options struct {
	Board *boards.Board
	// Artifact is the application, as a flasher would write it.
	Artifact *Artifact
	// Bootloader, if set, is flashed too, and the core starts in it after an
	// external reset, as a board does after its auto-reset (AVR only).
	Bootloader *flash.Image
	// For is the simulated time to run; 0 runs until ctx ends.
	For time.Duration
	// Realtime paces the simulation to the wall clock (AVR); otherwise it
	// runs as fast as the host can.
	Realtime bool
	// Input is sent to the console UART's receive line; InputAt is the
	// simulated time it starts at (AVR).
	Input   io.Reader
	InputAt time.Duration
	// Pins are port pins ("PB5") whose changes are recorded (AVR).
	Pins []string
	// ADC drives ADC channels with millivolts; Drive drives input pins
	// ("PD2": 0 or 1) (AVR).
	ADC   map[int]int
	Drive map[string]int
	// UART, if set, receives the console's bytes as they are sent.
	UART io.Writer
	// Pin, if set, is called for each pin change as it happens.
	Pin func(PinChange)
	// Stderr receives the simulator's own diagnostics.
	Stderr io.Writer
}

// Frame is one byte the console UART sent: its start on the line, the bit
// time and the frame length in bits (start, data, parity, stop).
type Frame struct {
	At   time.Duration
	Byte byte
	Bit  time.Duration
	Bits int
}

// PinChange is a pin's new level at a simulated time.
type PinChange struct {
	At    time.Duration
	Pin   string
	Level int
}

// Result is what a run saw.
type Result struct {
	Engine      string // "simavr atmega328p" or "qemu netduinoplus2"
	Board       string
	ImageSHA256 string
	// Simulated is the simulated time covered; Wall the wall-clock time.
	Simulated, Wall time.Duration
	// Clock says what simulated time is measured in.
	Clock string
	UART  []byte
	// Frames has the console's bytes with their times (AVR: timed at the
	// baud rate; QEMU: at the instruction that wrote them, Bit 0).
	Frames []Frame
	Pins   []PinChange
	// AppAt is when the core left the bootloader (with a bootloader), -1 if
	// it did not.
	AppAt time.Duration
	// Resets counts resets after the start (the watchdog's).
	Resets int
	// Halted says why the core stopped early ("" if it did not).
	Halted string
	// Overruns counts received bytes the firmware lost.
	Overruns int
}

// Ratio is simulated time per wall-clock second.
func (r *Result) Ratio() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return r.Simulated.Seconds() / r.Wall.Seconds()
}

// Run checks the image against the board (Check) and runs it.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Board == nil || opts.Artifact == nil {
		return nil, errors.New("sim: run: no board or no image")
	}
	if err := Check(opts.Board, opts.Artifact); err != nil {
		return nil, err
	}
	switch opts.Board.Sim.Engine {
	case "simavr":
		return runAVR(ctx, opts)
	case "qemu":
		if opts.Bootloader != nil {
			return nil, fmt.Errorf("sim: %s: --with-bootloader: %w: QEMU's STM32 models have no ROM bootloader", opts.Board.Name, ErrUnsupported)
		}
		if len(opts.Pins) > 0 || len(opts.ADC) > 0 || len(opts.Drive) > 0 {
			return nil, fmt.Errorf("sim: %s: pins: %w: QEMU %s does not model GPIO, so pin levels cannot be observed or driven", opts.Board.Name, ErrUnsupported, opts.Board.Sim.Machine)
		}
		return runQEMU(ctx, opts)
	}
	return nil, fmt.Errorf("sim: %s: %w", opts.Board.Name, ErrNoModel)
}

package simavr

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed harness/firmware_sim.c
var firmwareSource []byte

// FirmwareHarnessName is the file name of the compiled firmware harness.
const FirmwareHarnessName = "firmware_sim"

// FirmwareHarness returns the compiled firmware harness
// (harness/firmware_sim.c), compiling it on first use into the user's cache
// directory ($XDG_CACHE_HOME/kiln/simavr/<key>/), keyed by its source, the
// C compiler and libsimavr's version, so a run costs no compile.
func FirmwareHarness(ctx context.Context) (string, error) {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	h := sha256.New()
	h.Write(firmwareSource)
	for _, argv := range [][]string{{cc, "--version"}, {"pkg-config", "--modversion", "simavr"}} {
		out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
		fmt.Fprintf(h, "\x00%s", out)
	}
	key := hex.EncodeToString(h.Sum(nil))[:24]
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "kiln", "simavr", key)
	bin := filepath.Join(dir, FirmwareHarnessName)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("simavr: harness cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), key+".tmp-")
	if err != nil {
		return "", fmt.Errorf("simavr: harness cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := compile(ctx, tmp, FirmwareHarnessName, firmwareSource); err != nil {
		return "", err
	}
	// Another process may have won the race: its harness is as good.
	if err := os.Rename(tmp, dir); err != nil {
		if _, err2 := os.Stat(bin); err2 != nil {
			return "", fmt.Errorf("simavr: harness cache: %w", err)
		}
	}
	return bin, nil
}

// RunOptions say what firmware to run on which part, and for how long.
type RunOptions struct {
	// Harness is the compiled firmware harness; empty: FirmwareHarness.
	Harness string
	// MCU is simavr's name for the part ("atmega328p", "atmega2560").
	MCU string
	// Hz is the core clock.
	Hz int64
	// Flash is the flash content from address 0, as a programmer left it.
	Flash []byte
	// Boot, if not negative, is the BOOTRST address: the core starts there
	// after an external reset (MCUSR.EXTRF), as an Arduino's auto-reset
	// starts its bootloader. Negative: the core starts at 0 (power-on).
	Boot int64
	// Cycles is how many core cycles to simulate; 0 runs until ctx ends.
	Cycles uint64
	// Speed paces the simulation to the wall clock (1 = real time); 0 runs
	// as fast as the host can.
	Speed float64
	// Pins are the port pins ("PB5") whose level changes are reported.
	Pins []string
	// RX is sent on UART0's receive line at the baud rate the firmware
	// programs, from RXStart (a cycle) on, once the receiver is enabled.
	RX      io.Reader
	RXStart uint64
	// ADC drives ADC channels with millivolts (AVcc is 5000 mV).
	ADC map[int]int
	// Inputs drive input pins ("PD2") low (0) or high (1).
	Inputs map[string]int
	// Stderr receives simavr's diagnostics (default: discarded).
	Stderr io.Writer
}

// Event kinds.
const (
	EventUART  = 'u' // UART0 sent Byte; a bit lasts BitCycles, a frame Bits bits
	EventPin   = 'p' // Pin changed to Level
	EventApp   = 'a' // the core left the bootloader for the application at PC
	EventReset = 'r' // the MCU was reset (watchdog)
	EventHalt  = 'h' // the core stopped at PC: Reason
)

// Event is something the firmware did, at a core cycle.
type Event struct {
	Kind      byte
	Cycle     uint64
	Byte      byte
	BitCycles uint64
	Bits      int
	Pin       string
	Level     int
	PC        uint32
	Reason    string
}

// End is how a run ended.
type End struct {
	Cycles   uint64        // core cycles simulated
	Wall     time.Duration // wall-clock time the simulation took
	Overruns int           // received bytes lost (the firmware did not read in time)
}

// ErrHarness marks a harness that failed (bad part, bad pin, crash of the
// simulator itself) rather than firmware that misbehaved.
var ErrHarness = errors.New("simavr: harness failed")

// RunFirmware runs opts.Flash and calls on (from this goroutine) for every
// event, in cycle order. It returns when the cycles are simulated, the core
// halts, or ctx ends (then End holds what was simulated so far, and the
// error is nil: an interrupted run is a finished run).
func RunFirmware(ctx context.Context, opts RunOptions, on func(Event)) (End, error) {
	harness := opts.Harness
	if harness == "" {
		var err error
		if harness, err = FirmwareHarness(ctx); err != nil {
			return End{}, err
		}
	}
	dir, err := os.MkdirTemp("", "kiln-run-")
	if err != nil {
		return End{}, fmt.Errorf("simavr: run: %w", err)
	}
	defer os.RemoveAll(dir)
	flashFile := filepath.Join(dir, "flash.bin")
	if err := os.WriteFile(flashFile, opts.Flash, 0o644); err != nil {
		return End{}, fmt.Errorf("simavr: run: %w", err)
	}
	args := []string{"-m", opts.MCU, "-f", strconv.FormatInt(opts.Hz, 10)}
	if opts.Boot >= 0 {
		args = append(args, "-b", fmt.Sprintf("0x%x", opts.Boot))
	}
	if opts.Cycles > 0 {
		args = append(args, "-c", strconv.FormatUint(opts.Cycles, 10))
	}
	if opts.Speed > 0 {
		args = append(args, "-s", strconv.FormatFloat(opts.Speed, 'g', -1, 64))
	}
	if len(opts.Pins) > 0 {
		args = append(args, "-P", strings.Join(opts.Pins, ","))
	}
	if opts.RXStart > 0 {
		args = append(args, "-r", strconv.FormatUint(opts.RXStart, 10))
	}
	for ch, mv := range opts.ADC {
		args = append(args, "-a", fmt.Sprintf("%d=%d", ch, mv))
	}
	for pin, lv := range opts.Inputs {
		args = append(args, "-i", fmt.Sprintf("%s=%d", pin, lv))
	}
	args = append(args, flashFile)
	cmd := exec.Command(harness, args...)
	// The harness dies with kiln (see the harness's own check of its stdout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	if opts.Stderr != nil {
		cmd.Stderr = io.MultiWriter(opts.Stderr, &stderr)
	} else {
		cmd.Stderr = &stderr
	}
	var rxw io.WriteCloser
	if opts.RX != nil {
		if rxw, err = cmd.StdinPipe(); err != nil {
			return End{}, fmt.Errorf("simavr: run: %w", err)
		}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return End{}, fmt.Errorf("simavr: run: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return End{}, fmt.Errorf("simavr: run %s: %w", harness, err)
	}
	if rxw != nil {
		go func() {
			io.Copy(rxw, opts.RX)
			rxw.Close()
		}()
	}
	// ctx ends the run the way Ctrl-C does: the harness reports its end.
	stop := context.AfterFunc(ctx, func() { cmd.Process.Signal(syscall.SIGTERM) })
	defer stop()

	var end End
	var ended bool
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		num := func(i int) uint64 {
			if i >= len(f) {
				return 0
			}
			v, _ := strconv.ParseUint(f[i], 0, 64)
			return v
		}
		ev := Event{Cycle: num(1)}
		switch f[0] {
		case "u":
			ev.Kind, ev.Byte, ev.BitCycles, ev.Bits = EventUART, byte(num(2)), num(3), int(num(4))
		case "p":
			if len(f) < 4 {
				continue
			}
			ev.Kind, ev.Pin, ev.Level = EventPin, f[2], int(num(3))
		case "app":
			ev.Kind, ev.PC = EventApp, uint32(num(2))
		case "reset":
			ev.Kind = EventReset
		case "halt":
			ev.Kind, ev.PC = EventHalt, uint32(num(2))
			if len(f) > 3 {
				ev.Reason = strings.Join(f[3:], " ")
			}
		case "end":
			end = End{Cycles: num(1), Wall: time.Duration(num(2)), Overruns: int(num(3))}
			ended = true
			continue
		default:
			continue
		}
		on(ev)
	}
	werr := cmd.Wait()
	if !ended {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" && werr != nil {
			msg = werr.Error()
		}
		return End{}, fmt.Errorf("%w: %s", ErrHarness, msg)
	}
	return end, nil
}

package simavr

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed harness/optiboot_sim.c
var harnessSource []byte

// HarnessName is the file name Build gives the compiled harness.
const HarnessName = "optiboot_sim"

// ErrExited is returned when the harness is no longer running.
var ErrExited = errors.New("simavr: harness exited")

// Build compiles the harness into dir with the system C compiler ($CC or
// cc) against libsimavr and libsimavrparts, and returns its path.
func Build(ctx context.Context, dir string) (string, error) {
	return compile(ctx, dir, HarnessName, harnessSource)
}

// compile writes src to dir/name.c and compiles it into dir/name against
// libsimavr and libsimavrparts.
func compile(ctx context.Context, dir, name string, source []byte) (string, error) {
	src := filepath.Join(dir, name+".c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", fmt.Errorf("simavr: build: %w", err)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	flags := []string{"-I/usr/include/simavr", "-I/usr/include/simavr/parts", "-lsimavr", "-lsimavrparts"}
	if out, err := exec.CommandContext(ctx, "pkg-config", "--cflags", "--libs", "simavr", "simavrparts").Output(); err == nil {
		flags = strings.Fields(string(out))
	}
	bin := filepath.Join(dir, name)
	args := append([]string{"-O2", "-Wall", "-o", bin, src}, flags...)
	args = append(args, "-lpthread", "-lutil")
	cmd := exec.CommandContext(ctx, cc, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("simavr: build: %s %s: %w\n%s", cc, strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// Options say what to simulate.
type Options struct {
	// Bootloader is the Intel HEX image the MCU's flash starts with.
	Bootloader string
	// Harness is the compiled harness (Build). Empty: Start builds one into
	// a temporary directory that Close removes.
	Harness string
	// MCU is simavr's name for the part (default "atmega328p").
	MCU string
	// Hz is the core clock (default 16 MHz).
	Hz int
	// BootAddr is the byte address the core starts at (default 0x7E00,
	// Optiboot's on the ATmega328P with BOOTSZ = 256 words).
	BootAddr uint32
	// Speed paces the simulation: 1 (the default) is real time, 0.5 half.
	Speed float64
	// SPMTime is how long a page erase or write keeps SPMEN set (default
	// 4 ms, the ATmega328P's; negative makes them instant).
	SPMTime time.Duration
	// Stderr receives the harness's and simavr's diagnostics (default:
	// discarded).
	Stderr io.Writer
}

// Sim is a running simulation.
type Sim struct {
	// Port is the pseudo-terminal wired to the MCU's UART0. Opening it
	// resets the MCU into the bootloader.
	Port string

	cmd   *exec.Cmd
	dir   string // temporary directory owned by the Sim
	mu    sync.Mutex
	stdin io.WriteCloser
	lines chan string // protocol lines not yet consumed by a waiter
	done  chan struct{}
	log   []string // every line, for Events

	closeOnce sync.Once
	closeErr  error
}

// Start builds (if needed) and starts the harness and waits until its
// pseudo-terminal is ready. ctx bounds the start only; the simulation runs
// until Close.
func Start(ctx context.Context, opts Options) (*Sim, error) {
	if opts.Bootloader == "" {
		return nil, errors.New("simavr: start: no bootloader image")
	}
	if _, err := os.Stat(opts.Bootloader); err != nil {
		return nil, fmt.Errorf("simavr: start: %w", err)
	}
	dir, err := os.MkdirTemp("", "kiln-simavr-")
	if err != nil {
		return nil, fmt.Errorf("simavr: start: %w", err)
	}
	s := &Sim{dir: dir, lines: make(chan string, 64), done: make(chan struct{})}
	fail := func(err error) (*Sim, error) {
		s.Close()
		return nil, err
	}
	harness := opts.Harness
	if harness == "" {
		if harness, err = Build(ctx, dir); err != nil {
			return fail(err)
		}
	}
	args := []string{}
	if opts.MCU != "" {
		args = append(args, "-m", opts.MCU)
	}
	if opts.Hz > 0 {
		args = append(args, "-f", strconv.Itoa(opts.Hz))
	}
	if opts.BootAddr != 0 {
		args = append(args, "-b", fmt.Sprintf("0x%x", opts.BootAddr))
	}
	if opts.Speed > 0 {
		args = append(args, "-s", strconv.FormatFloat(opts.Speed, 'g', -1, 64))
	}
	switch {
	case opts.SPMTime < 0:
		args = append(args, "-p", "0")
	case opts.SPMTime > 0:
		args = append(args, "-p", strconv.FormatInt(opts.SPMTime.Microseconds(), 10))
	}
	args = append(args, opts.Bootloader)
	s.cmd = exec.Command(harness, args...)
	s.cmd.Stderr = opts.Stderr
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		return fail(fmt.Errorf("simavr: start: %w", err))
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		return fail(fmt.Errorf("simavr: start: %w", err))
	}
	if err := s.cmd.Start(); err != nil {
		return fail(fmt.Errorf("simavr: start %s: %w", harness, err))
	}
	go s.read(stdout)
	line, err := s.wait(ctx, "port: ")
	if err != nil {
		return fail(fmt.Errorf("simavr: start: %w", err))
	}
	s.Port = strings.TrimPrefix(line, "port: ")
	return s, nil
}

// read passes the harness's stdout lines to waiters until it exits.
func (s *Sim) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		s.mu.Lock()
		s.log = append(s.log, line)
		s.mu.Unlock()
		select {
		case s.lines <- line:
		default: // nobody waits for resets and app starts: keep them in log only
		}
	}
	s.cmd.Wait()
	close(s.done)
}

// wait returns the next line starting with prefix. A line starting with
// "error: " fails the wait.
func (s *Sim) wait(ctx context.Context, prefix string) (string, error) {
	for {
		select {
		case line := <-s.lines:
			if strings.HasPrefix(line, prefix) {
				return line, nil
			}
			if strings.HasPrefix(line, "error: ") {
				return "", fmt.Errorf("harness: %s", strings.TrimPrefix(line, "error: "))
			}
		case <-s.done:
			return "", ErrExited
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// command sends one line to the harness and waits for its answer.
func (s *Sim) command(ctx context.Context, cmd, answer string) (string, error) {
	// Drop stale lines (resets, app starts) so the answer is this one's.
	for drained := false; !drained; {
		select {
		case <-s.lines:
		default:
			drained = true
		}
	}
	if _, err := io.WriteString(s.stdin, cmd+"\n"); err != nil {
		return "", fmt.Errorf("%w: %v", ErrExited, err)
	}
	return s.wait(ctx, answer)
}

// Flash returns the whole simulated flash (32 KiB on the ATmega328P) as the
// MCU holds it now.
func (s *Sim) Flash(ctx context.Context) ([]byte, error) {
	path := filepath.Join(s.dir, "flash.bin")
	if _, err := s.command(ctx, "dump "+path, "dumped: "); err != nil {
		return nil, fmt.Errorf("simavr: dump flash: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simavr: dump flash: %w", err)
	}
	return b, nil
}

// Stats counts what crossed the simulated line since Start.
type Stats struct {
	RX, TX   int64 // bytes host to MCU, MCU to host
	Overruns int64 // bytes lost because the firmware did not read in time
	Behind   int64 // times the simulation fell >20 ms behind the wall clock
	Cycles   int64 // core cycles simulated
}

// Stats asks the harness for its counters.
func (s *Sim) Stats(ctx context.Context) (Stats, error) {
	line, err := s.command(ctx, "stats", "stats: ")
	if err != nil {
		return Stats{}, fmt.Errorf("simavr: stats: %w", err)
	}
	var st Stats
	for _, f := range strings.Fields(strings.TrimPrefix(line, "stats: ")) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "rx":
			st.RX = n
		case "tx":
			st.TX = n
		case "overruns", "dropped":
			st.Overruns += n
		case "behind":
			st.Behind = n
		case "cycles":
			st.Cycles = n
		}
	}
	return st, nil
}

// Events returns every line the harness printed so far ("reset: open",
// "app: 0x0", ...), oldest first.
func (s *Sim) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// Close stops the simulation and removes its temporary files.
func (s *Sim) Close() error {
	s.closeOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			if s.stdin != nil {
				io.WriteString(s.stdin, "quit\n")
				s.stdin.Close()
			}
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
				s.cmd.Process.Kill()
				<-s.done
			}
		}
		if err := os.RemoveAll(s.dir); err != nil {
			s.closeErr = fmt.Errorf("simavr: close: %w", err)
		}
	})
	return s.closeErr
}

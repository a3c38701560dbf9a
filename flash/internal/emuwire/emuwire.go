// Package emuwire is the device side of a serial line for kiln's bootloader
// emulators: a byte queue with the bootloader's watchdog, a reset line, UART
// pacing at the baud rate, and fault injection (drop, corrupt, delay, NACK,
// stop answering).
//
// An emulator's protocol loop reads with Getch and answers with Putch, the
// way the bootloader's C code does. Getch returns ErrReset when the reset
// line was pulsed (the loop starts over, as the MCU would), and ErrWatchdog
// when no byte came within the watchdog timeout (the bootloader "jumps to
// the application": the emulator stops answering until the next reset).
package emuwire

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"sync"
	"time"
)

var (
	// ErrReset means the reset line was pulsed: start the bootloader over.
	ErrReset = errors.New("emuwire: reset")
	// ErrWatchdog means the bootloader's watchdog expired.
	ErrWatchdog = errors.New("emuwire: watchdog timeout")
	// ErrApp is what a bootloader's command loop returns when it starts
	// the application (Serve then idles until the next reset).
	ErrApp = errors.New("emuwire: application started")
	// ErrStopped means a StopAfter fault took the device off the line.
	ErrStopped = errors.New("emuwire: device stopped answering")
)

// Faults says which faults to inject. Counts are 1-based over the life of a
// Wire; zero disables a fault. Rate adds random faults drawn from Seed.
type Faults struct {
	DropRx    int // the Nth byte from the host is lost
	CorruptRx int // the Nth byte from the host arrives with a bit flipped
	DropTx    int // the Nth byte to the host is lost
	CorruptTx int // the Nth byte to the host arrives with a bit flipped
	DelayTx   int // the Nth byte to the host is held back by Delay
	Delay     time.Duration
	Nack      int // the Nth command is refused (NOSYNC / STATUS_CMD_FAILED)
	StopAfter int // after N bytes from the host the device never answers again

	// Rate is the probability, per byte and per command, of a random fault
	// (drop, corrupt or delay a byte; refuse a command). Seed makes it repeatable.
	Rate float64
	Seed int64
}

// Config is the line's timing.
type Config struct {
	// Watchdog is how long the bootloader waits for a byte before it starts
	// the application. Zero waits forever.
	Watchdog time.Duration
	// Baud, with Pace, delivers bytes no faster than a UART at this rate
	// (10 bits a byte) would, in both directions.
	Baud int
	Pace bool
	Faults
}

// Wire is one device's serial line.
type Wire struct {
	cfg Config

	mu      sync.Mutex
	cond    chan struct{}
	queue   []byte
	arrived time.Time
	reset   bool
	readErr error
	rng     *rand.Rand
	rx, tx  int
	cmds    int
	stopped bool
	out     []byte
	rxFree  time.Time
	txFree  time.Time
	w       io.Writer
	// pendingDelay holds the next Flush back by Faults.Delay.
	pendingDelay bool
	// kick is when the watchdog was last reset (a byte was read, or reset);
	// watchdog is its current period.
	kick     time.Time
	watchdog time.Duration
	fired    bool
}

// New returns a line with cfg's timing and faults.
func New(cfg Config) *Wire {
	w := &Wire{cfg: cfg, cond: make(chan struct{}), kick: time.Now(), watchdog: cfg.Watchdog}
	if cfg.Rate > 0 {
		w.rng = rand.New(rand.NewSource(cfg.Seed))
	}
	return w
}

// Attach starts pumping bytes from rw into the line and sends answers to rw.
// The pump ends when rw's Read fails; Attach's caller closes rw to stop it.
// It returns a channel closed when the pump ends.
func (w *Wire) Attach(rw io.ReadWriter) <-chan struct{} {
	w.mu.Lock()
	w.w = rw
	w.queue = w.queue[:0]
	w.out = w.out[:0]
	w.readErr = nil
	w.reset = false
	w.fired = false
	w.kick = time.Now()
	w.watchdog = w.cfg.Watchdog
	w.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := rw.Read(buf)
			w.mu.Lock()
			w.queue = append(w.queue, buf[:n]...)
			w.arrived = time.Now()
			if err != nil {
				w.readErr = err
			}
			w.signal()
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return done
}

func (w *Wire) signal() {
	close(w.cond)
	w.cond = make(chan struct{})
}

// Reset pulses the reset line: input not yet read is lost and the next
// Getch returns ErrReset.
func (w *Wire) Reset() {
	w.mu.Lock()
	w.reset = true
	w.queue = w.queue[:0]
	w.out = w.out[:0]
	w.signal()
	w.kick = time.Now()
	w.watchdog = w.cfg.Watchdog
	w.fired = false
	w.mu.Unlock()
}

// Stopped reports whether a StopAfter fault has taken the device off the line.
func (w *Wire) Stopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}

func (w *Wire) chance() bool {
	return w.rng != nil && w.rng.Float64() < w.cfg.Rate
}

func (w *Wire) byteTime() time.Duration {
	if !w.cfg.Pace || w.cfg.Baud <= 0 {
		return 0
	}
	return time.Duration(10 * float64(time.Second) / float64(w.cfg.Baud))
}

// Getch returns the next byte from the host, waiting at most the watchdog
// time. Pending answers are sent first.
func (w *Wire) Getch(ctx context.Context) (byte, error) {
	if err := w.Flush(); err != nil {
		return 0, err
	}
	w.mu.Lock()
	deadline := w.kick.Add(w.watchdog)
	wd := w.watchdog
	w.mu.Unlock()
	var timer <-chan time.Time
	if wd > 0 {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timer = t.C
	}
	for {
		w.mu.Lock()
		if w.reset {
			w.reset = false
			w.mu.Unlock()
			return 0, ErrReset
		}
		if w.fired {
			w.mu.Unlock()
			return 0, ErrWatchdog
		}
		if len(w.queue) > 0 {
			c := w.queue[0]
			w.queue = w.queue[:copy(w.queue, w.queue[1:])]
			arrived := w.arrived
			w.rx++
			n, f := w.rx, w.cfg.Faults
			if w.stopped || (f.StopAfter > 0 && n > f.StopAfter) {
				w.stopped = true
				w.mu.Unlock()
				continue
			}
			drop := n == f.DropRx
			corrupt := n == f.CorruptRx
			if !drop && !corrupt && w.chance() {
				drop = w.rng.Intn(2) == 0
				corrupt = !drop
			}
			var wait time.Duration
			if bt := w.byteTime(); bt > 0 {
				if w.rxFree.Before(arrived) {
					w.rxFree = arrived
				}
				w.rxFree = w.rxFree.Add(bt)
				wait = time.Until(w.rxFree)
			}
			w.mu.Unlock()
			if wait > time.Millisecond {
				if err := sleep(ctx, wait); err != nil {
					return 0, err
				}
			}
			if drop {
				continue
			}
			if corrupt {
				c ^= 1 << (uint(n) % 8)
			}
			w.mu.Lock()
			w.kick = time.Now()
			w.mu.Unlock()
			return c, nil
		}
		if w.readErr != nil {
			err := w.readErr
			w.mu.Unlock()
			return 0, err
		}
		wait := w.cond
		w.mu.Unlock()
		select {
		case <-wait:
		case <-timer:
			return 0, ErrWatchdog
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// GetN reads n bytes.
func (w *Wire) GetN(ctx context.Context, n int) ([]byte, error) {
	buf := make([]byte, n)
	for i := range buf {
		c, err := w.Getch(ctx)
		if err != nil {
			return nil, err
		}
		buf[i] = c
	}
	return buf, nil
}

// Putch queues bytes for the host; they go out at the next Getch or Flush.
func (w *Wire) Putch(p ...byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	for _, c := range p {
		w.tx++
		n, f := w.tx, w.cfg.Faults
		drop, corrupt, delay := n == f.DropTx, n == f.CorruptTx, n == f.DelayTx
		if !drop && !corrupt && !delay && w.chance() {
			switch w.rng.Intn(3) {
			case 0:
				drop = true
			case 1:
				corrupt = true
			default:
				delay = true
			}
		}
		switch {
		case drop:
			continue
		case corrupt:
			c ^= 1 << (uint(n) % 8)
		case delay:
			w.pendingDelay = true
		}
		w.out = append(w.out, c)
	}
}

// Nack reports whether the command now starting should be refused.
func (w *Wire) Nack() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cmds++
	return w.cmds == w.cfg.Nack || w.chance()
}

// Flush sends queued answers, paced at the baud rate when asked to.
func (w *Wire) Flush() error {
	w.mu.Lock()
	out := append([]byte(nil), w.out...)
	w.out = w.out[:0]
	wr := w.w
	delayNow := w.pendingDelay
	w.pendingDelay = false
	var wait time.Duration
	var fired bool
	if bt := w.byteTime(); bt > 0 && len(out) > 0 {
		now := time.Now()
		if w.txFree.Before(now) {
			w.txFree = now
		}
		// Sending does not feed the watchdog: a bootloader that talks
		// longer than its watchdog period is reset mid-answer.
		if w.watchdog > 0 {
			if room := int(time.Until(w.kick.Add(w.watchdog)) / bt); room < len(out) {
				out, fired = out[:max(room, 0)], true
				w.fired = true
			}
		}
		w.txFree = w.txFree.Add(time.Duration(len(out)) * bt)
		wait = time.Until(w.txFree)
	}
	w.mu.Unlock()
	if delayNow && w.cfg.Delay > 0 {
		time.Sleep(w.cfg.Delay)
	}
	if wait > 0 {
		time.Sleep(wait)
	}
	if len(out) > 0 && wr != nil {
		if _, err := wr.Write(out); err != nil {
			return err
		}
	}
	if fired {
		return ErrWatchdog
	}
	return nil
}

// SetWatchdog changes the watchdog period from now on (Optiboot sets 16 ms
// when it leaves programming mode). Reset restores the configured period.
func (w *Wire) SetWatchdog(d time.Duration) {
	w.mu.Lock()
	w.watchdog = d
	w.kick = time.Now()
	w.mu.Unlock()
}

// Idle is the application running instead of the bootloader: it ignores the
// host until the reset line is pulsed (nil) or the line or ctx ends.
func (w *Wire) Idle(ctx context.Context) error {
	for {
		w.mu.Lock()
		if w.reset {
			w.reset = false
			w.mu.Unlock()
			return nil
		}
		w.queue = w.queue[:0]
		w.out = w.out[:0]
		err, wait := w.readErr, w.cond
		w.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Serve runs a bootloader's command loop on rw until ctx ends or rw fails,
// starting as after an external reset: in the bootloader. A reset starts the
// loop over; a watchdog expiry or the loop returning ErrApp ends the
// programming session (end) and leaves the chip in its application, deaf to
// the host, until the next reset. The normal ends of serving (the host
// closed the line, ctx ended) return nil.
func (w *Wire) Serve(ctx context.Context, rw io.ReadWriter, end func(), loop func(context.Context) error) error {
	w.Attach(rw)
	defer end()
	for {
		err := loop(ctx)
		switch {
		case errors.Is(err, ErrReset):
			continue
		case errors.Is(err, ErrWatchdog), errors.Is(err, ErrApp):
			end()
			if err := w.Idle(ctx); err != nil {
				return quiet(err)
			}
		default:
			return quiet(err)
		}
	}
}

// quiet turns the normal ends of serving into nil.
func quiet(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || errors.Is(err, io.ErrClosedPipe) {
		return nil
	}
	return err
}

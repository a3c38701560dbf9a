package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"kiln.dev/kiln/flash"
)

// progressBar draws a one-line bar on a terminal and nothing elsewhere.
type progressBar struct {
	w     io.Writer
	on    bool
	mu    sync.Mutex
	phase string
	last  time.Time
	start time.Time
}

// newProgress returns a bar on w if w is a terminal and JSON is off.
func newProgress(w io.Writer, jsonOut bool) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok && !jsonOut {
		on = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, on: on, start: time.Now()}
}

// Func returns the flash.Progress that feeds the bar.
func (b *progressBar) Func() flash.Progress {
	if b == nil || !b.on {
		return nil
	}
	return b.update
}

func (b *progressBar) update(phase string, done, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if phase == b.phase && done < total && now.Sub(b.last) < 50*time.Millisecond {
		return
	}
	if phase != b.phase && b.phase != "" {
		fmt.Fprintln(b.w)
	}
	b.phase, b.last = phase, now
	const width = 32
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	fmt.Fprintf(b.w, "\r%-7s [%s%s] %3.0f%% %s", phase, strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100, humanBytes(done))
}

// Logf prints a line of its own, ending the bar's line first.
func (b *progressBar) Logf(format string, a ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.on && b.phase != "" {
		fmt.Fprintln(b.w)
		b.phase = ""
	}
	fmt.Fprintf(b.w, format+"\n", a...)
}

// Done ends the bar's line.
func (b *progressBar) Done() {
	if b != nil && b.on && b.phase != "" {
		fmt.Fprintln(b.w)
		b.phase = ""
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

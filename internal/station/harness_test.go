package station_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/stk500/stk500test"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/station"
	"kiln.dev/kiln/internal/trust"
)

// ptyBoard is an emulated Arduino Uno (Optiboot) behind a pseudo-terminal,
// as kiln emulate serves one: every open of the port resets it into its
// bootloader. unplug takes it away the way a USB cable does: the device
// node vanishes and an open port reads EIO.
type ptyBoard struct {
	dev    *stk500test.Device
	ptmx   *os.File
	name   string // /dev/pts/N
	link   string // a symlink to name, or ""
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func plugBoard(t testing.TB, cfg stk500test.Config, link string) *ptyBoard {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	name := tty.Name()
	tty.Close()
	ctx, cancel := context.WithCancel(context.Background())
	b := &ptyBoard{dev: stk500test.New(cfg), ptmx: ptmx, name: name, link: link, cancel: cancel, done: make(chan struct{})}
	go b.serve(ctx)
	if link != "" {
		if err := os.Symlink(name, link); err != nil {
			b.unplug()
			t.Fatalf("plug: %v", err)
		}
	}
	t.Cleanup(b.unplug)
	return b
}

func (b *ptyBoard) serve(ctx context.Context) {
	defer close(b.done)
	// A session the emulator ends with an error (an injected fault) does not
	// unplug the board: serve the next open.
	for ctx.Err() == nil {
		_ = device.ServePTY(ctx, b.ptmx, b.dev)
	}
}

// connect links the board at link (plugs its cable in).
func (b *ptyBoard) connect(t testing.TB, link string) {
	t.Helper()
	b.link = link
	if err := os.Symlink(b.name, link); err != nil {
		t.Fatalf("plug: %v", err)
	}
}

// unplug removes the link, stops the board and closes the pty: the node
// disappears.
func (b *ptyBoard) unplug() {
	b.once.Do(func() {
		if b.link != "" {
			os.Remove(b.link)
		}
		b.cancel()
		<-b.done
		b.ptmx.Close()
	})
}

// fastUno is an unpaced Uno with a short watchdog.
func fastUno() stk500test.Config {
	cfg := stk500test.Uno()
	cfg.Pace = false
	return cfg
}

// firmware returns n bytes of made-up program at address 0.
func firmware(n int, seed byte) []byte {
	fw := make([]byte, n)
	for i := range fw {
		fw[i] = byte(i*31) ^ seed
	}
	return fw
}

// writeHex writes data at address 0 as Intel HEX. With sparse, lines that
// are all 0xFF (erased flash) are left out, as avr-objcopy's output would.
func writeHex(t testing.TB, path string, data []byte, sparse bool) {
	t.Helper()
	var sb strings.Builder
	for a := 0; a < len(data); a += 16 {
		end := min(a+16, len(data))
		if sparse && bytes.Count(data[a:end], []byte{0xFF}) == end-a {
			continue
		}
		rec := []byte{byte(end - a), byte(a >> 8), byte(a), 0}
		rec = append(rec, data[a:end]...)
		sum := byte(0)
		for _, c := range rec {
			sum += c
		}
		rec = append(rec, -sum)
		fmt.Fprintf(&sb, ":%X\n", rec)
	}
	sb.WriteString(":00000001FF\n")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// line is a test station's files.
type line struct {
	dir      string
	artifact string
	fw       []byte
	logKey   *trust.SecretKey
	log      string
	timeout  string // per-answer timeout
	tries    int
}

func newLine(t testing.TB, fwSize int) *line {
	t.Helper()
	dir := t.TempDir()
	l := &line{dir: dir, artifact: filepath.Join(dir, "blink.hex"), fw: firmware(fwSize, 0x5a), log: filepath.Join(dir, "audit.jsonl"),
		timeout: "150ms", tries: 4}
	writeHex(t, l.artifact, l.fw, false)
	k, err := trust.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	l.logKey = k
	return l
}

// config writes STATION.toml with the given target lines and parses it.
func (l *line) config(t testing.TB, extra, targetLines string) *station.Config {
	t.Helper()
	src := fmt.Sprintf(`name = "test-line"
operator = "tester"
log = "audit.jsonl"
poll = "10ms"
timeout = %q
tries = %d
grace = "5s"
%s
[serial]
prefix = "KLN-"
start = 1
width = 6

[keys]
ed25519 = true

[[target]]
board = "arduino-uno"
artifact = "blink.hex"
%s
`, l.timeout, l.tries, extra, targetLines)
	p := filepath.Join(l.dir, "STATION.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := station.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// records reads the log's provision records, after checking the log.
func (l *line) records(t testing.TB) []auditlog.Entry {
	t.Helper()
	if _, err := auditlog.VerifyFile(l.log, []*trust.PublicKey{l.logKey.Public()}); err != nil {
		t.Fatalf("audit log does not verify: %v", err)
	}
	f, err := os.Open(l.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	es, err := auditlog.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []auditlog.Entry
	for _, e := range es {
		if e.Kind == station.KindProvision {
			out = append(out, e)
		}
	}
	return out
}

// quote renders strings as a TOML array.
func quote(ss ...string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// recorder keeps every event; wait finds the first one not yet taken.
type recorder struct {
	mu     sync.Mutex
	evs    []station.Event
	taken  map[int]bool
	notify chan struct{}
}

func newRecorder() *recorder {
	return &recorder{taken: map[int]bool{}, notify: make(chan struct{}, 1)}
}

func (r *recorder) add(e station.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) wait(ctx context.Context, t testing.TB, port string, cond func(station.Event) bool) station.Event {
	t.Helper()
	for {
		r.mu.Lock()
		for i, e := range r.evs {
			if !r.taken[i] && e.Port == port && cond(e) {
				r.taken[i] = true
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("waiting for an event on %s: %v", port, ctx.Err())
		}
	}
}

func ended(e station.Event) bool {
	return e.State == station.StateVerified || e.State == station.StateFailed || e.State == station.StateAborted
}

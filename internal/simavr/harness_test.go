package simavr_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.bug.st/serial"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/simavr"
)

// line opens the simulated Uno's pty as a serial port, the way a flashing
// tool does, and reads through a flash.Link.
func line(t *testing.T, port string) (*flash.Link, serial.Port) {
	t.Helper()
	p, err := serial.Open(port, &serial.Mode{BaudRate: 115200})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return flash.NewLink(p), p
}

// exchange writes req and reads exactly n answer bytes.
func exchange(t *testing.T, l *flash.Link, req []byte, n int) []byte {
	t.Helper()
	if _, err := l.Write(req); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if err := l.ReadFull(context.Background(), got, 3*time.Second); err != nil {
		t.Fatalf("answer to % x: %v", req, err)
	}
	return got
}

// waitEvent polls the harness's events until one starts with prefix.
func waitEvent(t *testing.T, events func() []string, prefix string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(events(), func(e string) bool { return strings.HasPrefix(e, prefix) }) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q event within %v: %q", prefix, within, events())
}

// TestHarnessResetOnOpen: left alone, Optiboot's one-second watchdog starts
// the application, which the harness holds; opening the pty resets the MCU
// with EXTRF set, so Optiboot stays in the bootloader and answers.
func TestHarnessResetOnOpen(t *testing.T) {
	t.Parallel()
	sim := start(t)
	waitEvent(t, sim.Events, "app: 0x0", 10*time.Second)
	l, _ := line(t, sim.Port)
	waitEvent(t, sim.Events, "reset: open", 5*time.Second)
	if got := exchange(t, l, []byte{'0', ' '}, 2); !bytes.Equal(got, []byte{0x14, 0x10}) {
		t.Fatalf("GET_SYNC answered % x, want 14 10", got)
	}
	// The real bootloader's identity: version 8.3, the ATmega328P signature.
	if got := exchange(t, l, []byte{'A', 0x81, ' ', 'A', 0x82, ' ', 'u', ' '}, 3+3+5); !bytes.Equal(got, []byte{0x14, 8, 0x10, 0x14, 3, 0x10, 0x14, 0x1e, 0x95, 0x0f, 0x10}) {
		t.Fatalf("version and signature: % x", got)
	}
}

// TestHarnessOverrun: bytes sent while Optiboot programs a page (8 ms in
// which it does not read the UART) overrun the ATmega's three-byte receive
// path, as on a real chip: the harness counts them, and tools must not
// pipeline past a page write.
func TestHarnessOverrun(t *testing.T) {
	t.Parallel()
	sim := start(t)
	l, _ := line(t, sim.Port)
	if got := exchange(t, l, []byte{'0', ' '}, 2); !bytes.Equal(got, []byte{0x14, 0x10}) {
		t.Fatalf("GET_SYNC answered % x, want 14 10", got)
	}
	page := append([]byte{'U', 0, 0, ' ', 'd', 0, 128, 'F'}, bytes.Repeat([]byte{0x5a}, 128)...)
	page = append(page, ' ')
	// Ten more bytes right behind the page: the 4th onwards arrive while
	// the page is being erased and written.
	page = append(page, bytes.Repeat([]byte{'0', ' '}, 5)...)
	// LOAD_ADDRESS and PROG_PAGE are answered (the page is programmed).
	if got := exchange(t, l, page, 4); !bytes.Equal(got, []byte{0x14, 0x10, 0x14, 0x10}) {
		t.Fatalf("LOAD_ADDRESS, PROG_PAGE answered % x, want 14 10 14 10", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		st, err := sim.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Overruns > 0 {
			t.Logf("%d bytes overran the receiver while the page was programmed", st.Overruns)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no overrun counted; stats %+v", st)
		case <-time.After(20 * time.Millisecond):
		}
	}
	got, err := sim.Flash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:128], bytes.Repeat([]byte{0x5a}, 128)) {
		t.Fatalf("the page before the overrun was not programmed: % x", got[:16])
	}
}

// TestHarnessDumpOnSIGTERM: the harness run by hand (-o FILE) writes the
// flash when it is told to stop, bootloader included.
func TestHarnessDumpOnSIGTERM(t *testing.T) {
	t.Parallel()
	boot := bootloader(t)
	out := filepath.Join(t.TempDir(), "flash.bin")
	cmd := exec.Command(harness, "-o", out, boot)
	stdin, err := cmd.StdinPipe() // held open: end of stdin would stop it too
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "port: /dev/pts/") {
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("harness after SIGTERM: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	img, err := flash.Load(boot, flash.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != flashSize {
		t.Fatalf("dump is %d bytes, want %d", len(got), flashSize)
	}
	for _, s := range img.Segments {
		if !bytes.Equal(got[s.Addr:s.End()], s.Data) {
			t.Fatalf("dump does not hold the bootloader at 0x%04x", s.Addr)
		}
	}
	if !bytes.Equal(got[:bootAddr], bytes.Repeat([]byte{0xff}, bootAddr)) {
		t.Fatal("the application area of a fresh MCU is not erased")
	}
}

// TestStartRefuses: Start fails cleanly without a bootloader image.
func TestStartRefuses(t *testing.T) {
	ctx := context.Background()
	if _, err := simavr.Start(ctx, simavr.Options{Harness: harness}); err == nil {
		t.Fatal("Start without a bootloader succeeded")
	}
	_, err := simavr.Start(ctx, simavr.Options{Harness: harness, Bootloader: filepath.Join(t.TempDir(), "missing.hex")})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Start with a missing image: %v, want fs.ErrNotExist", err)
	}
}

package stm32_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"kiln.dev/kiln/flash/stm32/stm32test"
)

// servePTY serves d on a new pseudo-terminal and returns the terminal's
// path, as a USB-serial adapter's would be. The test keeps the terminal
// side open too, so the emulator's reads do not fail between programs.
func servePTY(t testing.TB, d *stm32test.Device) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = d.Serve(ctx, ptmx)
	}()
	t.Cleanup(func() {
		cancel()
		tty.Close()
		ptmx.Close()
		wg.Wait()
	})
	return tty.Name()
}

func needStm32flash(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("stm32flash")
	if err != nil {
		t.Fatalf("stm32flash is needed (make deps installs it): %v", err)
	}
	return p
}

// stm32flashWrite runs stm32flash -w -v as the issue gives it.
func stm32flashWrite(ctx context.Context, bin, port, image string) ([]byte, error) {
	// Linux pseudo-terminals drop parity: 8n1 instead of the bootloader's 8e1.
	cmd := exec.CommandContext(ctx, bin, "-b", "115200", "-m", "8n1", "-w", image, "-v", "-S", "0x08000000", port)
	return cmd.CombinedOutput()
}

// TestStm32flashAgrees: the real stm32flash writes and verifies images
// through the emulator, which then holds them.
func TestStm32flashAgrees(t *testing.T) {
	bin := needStm32flash(t)
	for _, tc := range []struct {
		board string
		size  int
	}{
		{"bluepill", 64 << 10},       // the whole flash, 64 pages
		{"nucleo-f401re", 150 << 10}, // sectors 0-5: 16, 16, 16, 16, 64 and 128 KiB
	} {
		t.Run(tc.board, func(t *testing.T) {
			d := newDevice(t, tc.board)
			old := fill(t, d, 11)
			port := servePTY(t, d)
			data := randBytes(rand.New(rand.NewSource(int64(tc.size))), tc.size)
			image := filepath.Join(t.TempDir(), "image.bin")
			if err := os.WriteFile(image, data, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := stm32flashWrite(ctx, bin, port, image)
			if err != nil {
				t.Fatalf("stm32flash: %v\n%s", err, lastLines(out, 20))
			}
			for _, want := range []string{fmt.Sprintf("Device ID    : 0x%04x", d.PID), "Wrote and verified address 0x08"} {
				if !bytes.Contains(out, []byte(want)) {
					t.Errorf("stm32flash output lacks %q:\n%s", want, lastLines(out, 20))
				}
			}
			got, err := d.Memory(d.Board.Flash.Base, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the emulator's flash differs from the image stm32flash wrote")
			}
			// stm32flash erased exactly the pages the image covers.
			pages := d.Pages()
			st := d.Stats()
			for i, pg := range pages {
				want := 0
				if pg.Base < d.Board.Flash.Base+uint32(tc.size) {
					want = 1
				}
				if st.Erases[i] != want {
					t.Errorf("page %d erased %d times, want %d", i, st.Erases[i], want)
				}
			}
			rest, _ := d.Memory(d.Board.Flash.Base+uint32(tc.size), int(d.Board.Flash.Size)-tc.size)
			lastTouched := pages[len(pages)-1].End()
			for _, pg := range pages {
				if pg.End() >= uint64(d.Board.Flash.Base)+uint64(tc.size) {
					lastTouched = pg.End()
					break
				}
			}
			keep := old[lastTouched-uint64(d.Board.Flash.Base):]
			if !bytes.Equal(rest[len(rest)-len(keep):], keep) {
				t.Error("bytes in pages stm32flash did not touch changed")
			}
			t.Logf("stm32flash:\n%s", lastLines(out, 4))
		})
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(bytes.ReplaceAll(b, []byte("\r"), []byte("\n")))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var (
	kilnOnce sync.Once
	kilnPath string
	kilnErr  error
)

// kilnBinary builds cmd/kiln once for the tests that run the real command.
func kilnBinary(t testing.TB) string {
	t.Helper()
	kilnOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-stm32-test-")
		if err != nil {
			kilnErr = err
			return
		}
		kilnPath = filepath.Join(dir, "kiln")
		out, err := exec.Command("go", "build", "-o", kilnPath, "kiln.dev/kiln/cmd/kiln").CombinedOutput()
		if err != nil {
			kilnErr = fmt.Errorf("build kiln: %v\n%s", err, out)
		}
	})
	if kilnErr != nil {
		t.Fatal(kilnErr)
	}
	return kilnPath
}

// kilnEmulate starts `kiln emulate BOARD --state FILE` and returns the port
// it prints first, and a stop function that interrupts it and waits.
func kilnEmulate(t testing.TB, board, state string, extra ...string) (port string, stop func() string) {
	t.Helper()
	args := append([]string{"emulate", board, "--state", state}, extra...)
	cmd := exec.Command(kilnBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	port, ok := strings.CutPrefix(strings.TrimSpace(line), "port: ")
	if err != nil || !ok {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("kiln emulate: first line %q (%v), stderr:\n%s", line, err, stderr.String())
	}
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGINT)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					t.Errorf("kiln emulate: %v", err)
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("kiln emulate did not stop on SIGINT")
			}
		})
		return stderr.String()
	}
	t.Cleanup(func() { stop() })
	return port, stop
}

// TestStm32flashThroughKilnEmulate: the same, through the real kiln binary:
// `kiln emulate bluepill --state FILE` on a pty, stm32flash writing and
// verifying the whole flash, and the saved state holding the image.
func TestStm32flashThroughKilnEmulate(t *testing.T) {
	bin := needStm32flash(t)
	for _, tc := range []struct {
		board string
		args  []string
		size  int
	}{
		{"bluepill", nil, 64 << 10},
		{"nucleo-f401re", []string{"--protocol", "stm32-uart"}, 100 << 10},
	} {
		t.Run(tc.board, func(t *testing.T) {
			dir := t.TempDir()
			state := filepath.Join(dir, "state.bin")
			port, stop := kilnEmulate(t, tc.board, state, tc.args...)
			data := randBytes(rand.New(rand.NewSource(21)), tc.size)
			image := filepath.Join(dir, "image.bin")
			if err := os.WriteFile(image, data, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := stm32flashWrite(ctx, bin, port, image)
			if err != nil {
				t.Fatalf("stm32flash: %v\n%s\nkiln emulate: %s", err, lastLines(out, 20), stop())
			}
			if !bytes.Contains(out, []byte("Wrote and verified address")) {
				t.Errorf("stm32flash did not verify:\n%s", lastLines(out, 20))
			}
			// kiln reads it back too, through the same emulator process.
			kout, err := exec.CommandContext(ctx, kilnBinary(t), "verify", "--board", tc.board, "--protocol", "stm32-uart",
				"--port", port, "--address", "0x08000000", image).CombinedOutput()
			if err != nil {
				t.Errorf("kiln verify: %v\n%s", err, kout)
			}
			stop()
			saved, err := os.ReadFile(state)
			if err != nil {
				t.Fatal(err)
			}
			if len(saved) < tc.size || !bytes.Equal(saved[:tc.size], data) {
				t.Fatalf("kiln emulate's saved flash (%d bytes) does not hold the image", len(saved))
			}
			t.Logf("stm32flash:\n%s\nkiln verify: %s", lastLines(out, 2), strings.TrimSpace(string(kout)))
		})
	}
}

// TestKilnRefusesBadImagesBeforeIO: `kiln flash` checks the artifact against
// the board before it opens the port: an ELF built for an AVR, and a .bin
// that runs past the end of the Blue Pill's flash, fail with exit 1 and the
// emulator behind the port never sees a byte (not even the 0x7F sync).
func TestKilnRefusesBadImagesBeforeIO(t *testing.T) {
	kiln := kilnBinary(t)
	d := newDevice(t, "bluepill")
	port := servePTY(t, d)
	dir := t.TempDir()
	beyond := filepath.Join(dir, "beyond.bin")
	if err := os.WriteFile(beyond, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	avr := avrELF(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"avr elf", []string{avr.Source}, "ELF for EM_AVR"},
		{"past the end of flash", []string{"--address", "0x0800f800", beyond}, "outside bluepill's application flash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"flash", "--board", "bluepill", "--port", port, "--log", "off"}, tc.args...)
			out, err := exec.Command(kiln, args...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("kiln flash: %v, want exit 1\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) || !strings.HasPrefix(string(out), "kiln: ") {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
			if st := d.Stats(); st.Inits != 0 || len(st.Commands) != 0 {
				t.Errorf("the device saw %d syncs and commands %v", st.Inits, st.Commands)
			}
			t.Logf("%s", strings.TrimSpace(string(out)))
		})
	}
}

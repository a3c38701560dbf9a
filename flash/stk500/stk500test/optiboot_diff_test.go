package stk500test_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/serialport"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
	"kiln.dev/kiln/internal/simavr"
)

// optibootImage is the real Optiboot v8.3 build beside the repository.
func optibootImage(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		if filepath.Dir(dir) == dir {
			t.Fatal("no go.mod above the package")
		}
		dir = filepath.Dir(dir)
	}
	p := filepath.Join(dir, "..", "shared", "peers", "optiboot_atmega328_v8.3.hex")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("the real Optiboot image is missing (%v): it is expected at ../shared/peers beside the repository", err)
	}
	return p
}

// listen collects what the device says until it has been quiet for quiet.
func listen(ctx context.Context, l *flash.Link, quiet time.Duration) []byte {
	var out []byte
	for {
		b, err := l.Byte(ctx, quiet)
		if err != nil {
			return out
		}
		out = append(out, b)
	}
}

// TestEmulatorMatchesRealOptiboot sends the same requests to the real
// Optiboot v8.3 running in simavr and to the emulator and wants the same
// answers, byte for byte: framing, parameters, signature, the 8-bit READ_PAGE
// count, page erase-then-write of a short page, LEAVE_PROGMODE, and the
// silence after a request without CRC_EOP.
func TestEmulatorMatchesRealOptiboot(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real bootloader in simavr at real time")
	}
	t.Parallel()
	image := optibootImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	sim, err := simavr.Start(ctx, simavr.Options{Bootloader: image, Stderr: &stderr})
	if err != nil {
		t.Fatalf("simavr: %v\n%s", err, stderr.String())
	}
	defer sim.Close()

	page := make([]byte, 128)
	for i := range page {
		page[i] = byte(i*5 + 1)
	}
	word := func(addr int) []byte {
		return []byte{stk500.CmdLoadAddress, byte(addr / 2), byte(addr / 2 >> 8), stk500.CRCEOP}
	}
	// cmp > 0 compares only the first cmp answer bytes: simavr fills the
	// page buffer's unwritten words with 0x00FF (its tmppage is 16-bit words
	// set to 0xff), where the chip has 0xFFFF, so the rest of a short page
	// differs between simavr and silicon; the emulator follows silicon.
	script := []struct {
		name string
		req  []byte
		cmp  int
	}{
		{"get sync", []byte{stk500.CmdGetSync, stk500.CRCEOP}, 0},
		{"sw major", []byte{stk500.CmdGetParameter, stk500.ParamSWMajor, stk500.CRCEOP}, 0},
		{"sw minor", []byte{stk500.CmdGetParameter, stk500.ParamSWMinor, stk500.CRCEOP}, 0},
		{"hw version", []byte{stk500.CmdGetParameter, stk500.ParamHWVersion, stk500.CRCEOP}, 0},
		{"set device", append(append([]byte{stk500.CmdSetDevice}, bytes.Repeat([]byte{0x86}, 20)...), stk500.CRCEOP), 0},
		{"set device ext", []byte{stk500.CmdSetDeviceExt, 5, 4, 0xd7, 0xc2, 0, stk500.CRCEOP}, 0},
		{"enter progmode", []byte{stk500.CmdEnterProgmode, stk500.CRCEOP}, 0},
		{"read signature", []byte{stk500.CmdReadSign, stk500.CRCEOP}, 0},
		{"universal", []byte{stk500.CmdUniversal, 0xac, 0x80, 0, 0, stk500.CRCEOP}, 0},
		{"program page 2", append(append(word(256), stk500.CmdProgPage, 0, 128, 'F'), append(page, stk500.CRCEOP)...), 0},
		{"read 0x1000 bytes from page 2", append(word(256), stk500.CmdReadPage, 0x10, 0x00, 'F', stk500.CRCEOP), 0},
		{"load address inside page 2, read 8", append(word(300), stk500.CmdReadPage, 0, 8, 'F', stk500.CRCEOP), 0},
		{"program 4 bytes of page 2", append(word(256), stk500.CmdProgPage, 0, 4, 'F', 9, 8, 7, 6, stk500.CRCEOP), 0},
		{"read page 2", append(word(256), stk500.CmdReadPage, 0, 128, 'F', stk500.CRCEOP), 3 + 4},
		{"no CRC_EOP", []byte{stk500.CmdGetSync, 0x21}, 0},
		{"silent after", []byte{stk500.CmdGetSync, stk500.CRCEOP}, 0},
	}

	run := func(rw io.ReadWriter) [][]byte {
		l := flash.NewLink(rw)
		var answers [][]byte
		for _, s := range script {
			if _, err := l.Write(s.req); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			answers = append(answers, listen(ctx, l, 300*time.Millisecond))
		}
		return answers
	}

	port, err := serialport.Open(ctx, sim.Port, serialport.Options{Baud: 115200})
	if err != nil {
		t.Fatal(err)
	}
	real := run(port)
	port.Close()

	dev := stk500test.New(stk500test.Uno())
	host, board := net.Pipe()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- dev.Serve(sctx, board) }()
	emu := run(host)
	stop()
	host.Close()
	board.Close()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}

	var diffs []string
	for i, s := range script {
		r, e := real[i], emu[i]
		if s.cmp > 0 && len(r) >= s.cmp && len(e) >= s.cmp {
			if len(r) != len(e) {
				diffs = append(diffs, fmt.Sprintf("%s: real Optiboot answered %d bytes, emulator %d", s.name, len(r), len(e)))
			}
			r, e = r[:s.cmp], e[:s.cmp]
		}
		if !bytes.Equal(r, e) {
			diffs = append(diffs, fmt.Sprintf("%s: real Optiboot % x, emulator % x", s.name, real[i], emu[i]))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("the emulator differs from Optiboot v8.3:\n%s\nharness: %q\n%s", strings.Join(diffs, "\n"), sim.Events(), stderr.String())
	}
	if len(real[10]) != 2+1+256+1 {
		t.Errorf("READ_PAGE of 0x1000: %d answer bytes, want 256 data", len(real[10]))
	}
	if len(real[len(real)-1]) != 0 {
		t.Errorf("Optiboot answered after a request without CRC_EOP")
	}
}

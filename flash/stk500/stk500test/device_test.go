package stk500test_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/emutest"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
)

// line serves dev on a pipe and returns the host end.
func line(t *testing.T, dev *stk500test.Device) net.Conn {
	t.Helper()
	return emutest.Serve(t, dev.Serve, false)
}

// exchange writes req and reads n answer bytes (or times out).
func exchange(t *testing.T, c net.Conn, req []byte, n int) ([]byte, error) {
	t.Helper()
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	return buf, err
}

func TestOptibootAnswers(t *testing.T) {
	c := line(t, stk500test.New(stk500test.Uno()))
	for _, x := range []struct{ req, want []byte }{
		{[]byte{stk500.CmdGetSync, stk500.CRCEOP}, []byte{0x14, 0x10}},
		{[]byte{stk500.CmdGetParameter, stk500.ParamSWMajor, stk500.CRCEOP}, []byte{0x14, 8, 0x10}},
		{[]byte{stk500.CmdGetParameter, stk500.ParamSWMinor, stk500.CRCEOP}, []byte{0x14, 3, 0x10}},
		{[]byte{stk500.CmdGetParameter, 0x98, stk500.CRCEOP}, []byte{0x14, 3, 0x10}},
		{append(append([]byte{stk500.CmdSetDevice}, make([]byte, 20)...), stk500.CRCEOP), []byte{0x14, 0x10}},
		{[]byte{stk500.CmdSetDeviceExt, 5, 4, 0xd7, 0xc2, 0, stk500.CRCEOP}, []byte{0x14, 0x10}},
		{[]byte{stk500.CmdReadSign, stk500.CRCEOP}, []byte{0x14, 0x1e, 0x95, 0x0f, 0x10}},
		{[]byte{stk500.CmdUniversal, 0xac, 0x80, 0, 0, stk500.CRCEOP}, []byte{0x14, 0, 0x10}},
	} {
		got, err := exchange(t, c, x.req, len(x.want))
		if err != nil || !bytes.Equal(got, x.want) {
			t.Errorf("% x: got % x, %v; want % x", x.req, got, err, x.want)
		}
	}
}

// Page semantics: a short PROG_PAGE leaves the rest of the page erased
// (the page buffer starts at 0xFF and the page is erased first), and the
// bootloader section never changes.
func TestPageEraseWriteAndBootloaderProtection(t *testing.T) {
	dev := stk500test.New(stk500test.Uno())
	before := dev.Flash()
	old := bytes.Repeat([]byte{0x55}, 256)
	dev.LoadAppFlash(old)
	c := line(t, dev)
	// word address 0x40 = byte 0x80; write 4 bytes.
	for _, req := range [][]byte{
		{stk500.CmdLoadAddress, 0x40, 0x00, stk500.CRCEOP},
		{stk500.CmdProgPage, 0, 4, 'F', 1, 2, 3, 4, stk500.CRCEOP},
		{stk500.CmdLoadAddress, 0x00, 0x3f, stk500.CRCEOP}, // 0x7E00, the bootloader
		{stk500.CmdProgPage, 0, 4, 'F', 0, 0, 0, 0, stk500.CRCEOP},
	} {
		if got, err := exchange(t, c, req, 2); err != nil || !bytes.Equal(got, []byte{0x14, 0x10}) {
			t.Fatalf("% x: % x %v", req, got, err)
		}
	}
	fl := dev.Flash()
	want := append([]byte(nil), old[:128]...)
	want = append(want, 1, 2, 3, 4)
	want = append(want, bytes.Repeat([]byte{0xFF}, 124)...)
	if !bytes.Equal(fl[:256], want) {
		t.Fatalf("pages 0-1: % x", fl[:256])
	}
	if !bytes.Equal(fl[0x7E00:], before[0x7E00:]) {
		t.Fatal("the bootloader section changed")
	}
}

// Optiboot's watchdog: a second without a byte, or a request without
// CRC_EOP, starts the application, which ignores the line until a reset.
func TestWatchdogAndBadSyncStartTheApplication(t *testing.T) {
	cfg := stk500test.Uno()
	cfg.Watchdog = 100 * time.Millisecond
	dev := stk500test.New(cfg)
	c := line(t, dev)
	if _, err := exchange(t, c, []byte{stk500.CmdGetSync, stk500.CRCEOP}, 2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	if got, err := exchange(t, c, []byte{stk500.CmdGetSync, stk500.CRCEOP}, 2); err == nil {
		t.Fatalf("answered % x after the watchdog", got)
	}
	dev.Reset()
	if got, err := exchange(t, c, []byte{stk500.CmdGetSync, stk500.CRCEOP}, 2); err != nil || got[0] != 0x14 {
		t.Fatalf("after reset: % x %v", got, err)
	}
	if got, err := exchange(t, c, []byte{stk500.CmdGetSync, 0x21}, 1); err == nil {
		t.Fatalf("answered % x to a request without CRC_EOP", got)
	}
}

// Optiboot on the ATmega328P keeps READ_PAGE counts in 8 bits: asking for
// 4096 bytes (0x1000) reads 256.
func TestEightBitCounts(t *testing.T) {
	c := line(t, stk500test.New(stk500test.Uno()))
	exchange(t, c, []byte{stk500.CmdLoadAddress, 0, 0, stk500.CRCEOP}, 2)
	got, err := exchange(t, c, []byte{stk500.CmdReadPage, 0x10, 0x00, 'F', stk500.CRCEOP}, 258)
	if err != nil || got[0] != 0x14 || got[257] != 0x10 {
		t.Fatalf("read of 0x1000: %d bytes, %v", len(got), err)
	}
}

// On a chip with 256-byte pages (16-bit counts) a long READ_PAGE on a paced
// line outlives Optiboot's one-second watchdog (sending does not feed it):
// the answer is cut off. The client's default read chunk stays inside it.
func TestPacedLongReadTripsWatchdog(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds of paced line time")
	}
	t.Parallel()
	cfg := stk500test.Uno()
	cfg.Pace = true
	cfg.PageSize = 256
	img, _ := flash.NewImage("t", flash.Segment{Addr: 0, Data: bytes.Repeat([]byte{0xA5}, 12800)})
	for _, chunk := range []int{0, 16384} {
		dev := stk500test.New(cfg)
		dev.LoadAppFlash(img.Segments[0].Data)
		host := line(t, dev)
		c := stk500.New(host, stk500.Config{Signature: cfg.Signature, PageSize: 256, Tries: 2, Retries: 1, ReadChunk: chunk, Timeout: time.Second,
			Reset: func(context.Context) error { dev.Reset(); return nil }, BootTime: time.Millisecond})
		if err := c.Connect(context.Background()); err != nil {
			t.Fatal(err)
		}
		_, err := flash.Verify(context.Background(), c, img, nil)
		switch {
		case chunk == 0 && err != nil:
			t.Errorf("default chunk: %v", err)
		case chunk != 0 && !errors.Is(err, flash.ErrNoAnswer):
			t.Errorf("16 KiB chunk: err = %v, want the watchdog to cut it off", err)
		}
	}
}

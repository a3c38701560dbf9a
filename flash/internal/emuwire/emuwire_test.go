package emuwire

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func pipe(t *testing.T, w *Wire) net.Conn {
	t.Helper()
	host, dev := net.Pipe()
	w.Attach(dev)
	t.Cleanup(func() { host.Close(); dev.Close() })
	return host
}

func TestRxFaults(t *testing.T) {
	w := New(Config{Faults: Faults{DropRx: 2, CorruptRx: 4, StopAfter: 5}})
	host := pipe(t, w)
	go host.Write([]byte{1, 2, 3, 4, 5, 6, 7})
	ctx := context.Background()
	got, err := w.GetN(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	// byte 2 dropped, byte 4 has bit 4 flipped; after byte 5 the device is gone.
	if got[0] != 1 || got[1] != 3 || got[2] != 4^(1<<4) {
		t.Fatalf("got % x", got)
	}
	if c, err := w.Getch(ctx); err != nil || c != 5 {
		t.Fatalf("byte 5: 0x%02x, %v", c, err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if c, err := w.Getch(ctx2); err == nil {
		t.Fatalf("read 0x%02x after StopAfter", c)
	}
	if !w.Stopped() {
		t.Fatal("not stopped")
	}
}

func TestTxFaultsAndReset(t *testing.T) {
	w := New(Config{Watchdog: 50 * time.Millisecond, Faults: Faults{DropTx: 1, CorruptTx: 3}})
	host := pipe(t, w)
	w.Putch(0x10, 0x20, 0x30)
	go w.Flush()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(host, buf); err != nil || buf[0] != 0x20 || buf[1] != 0x30^(1<<3) {
		t.Fatalf("got % x, %v", buf, err)
	}
	// No byte within the watchdog period.
	if _, err := w.Getch(context.Background()); !errors.Is(err, ErrWatchdog) {
		t.Fatalf("err = %v, want ErrWatchdog", err)
	}
	w.Reset()
	if _, err := w.Getch(context.Background()); !errors.Is(err, ErrReset) {
		t.Fatalf("err = %v, want ErrReset", err)
	}
}

func TestNackCountsCommands(t *testing.T) {
	w := New(Config{Faults: Faults{Nack: 3}})
	var got []bool
	for i := 0; i < 4; i++ {
		got = append(got, w.Nack())
	}
	if got[0] || got[1] || !got[2] || got[3] {
		t.Fatalf("nacks %v", got)
	}
}

package stk500_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"net"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
)

// connect serves dev on one end of a pipe and returns a connected client on
// the other; the client's reset line is the device's reset pin.
func connect(t testing.TB, dev *stk500test.Device, cfg stk500.Config) *stk500.Client {
	t.Helper()
	host, board := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Serve(ctx, board) }()
	t.Cleanup(func() {
		cancel()
		host.Close()
		board.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	cfg.Reset = func(context.Context) error { dev.Reset(); return nil }
	if cfg.Timeout == 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	c := stk500.New(host, cfg)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return c
}

func unoConfig() stk500.Config {
	return stk500.Config{Signature: [3]byte{0x1e, 0x95, 0x0f}, PageSize: 128}
}

func randomImage(seed int64, addr uint32, n int) *flash.Image {
	data := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(data)
	img, err := flash.NewImage("random", flash.Segment{Addr: addr, Data: data})
	if err != nil {
		panic(err)
	}
	return img
}

func TestProgramFullApplicationArea(t *testing.T) {
	dev := stk500test.New(stk500test.Uno())
	c := connect(t, dev, unoConfig())
	img := randomImage(1, 0, 32256)
	res, err := flash.Program(context.Background(), c, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || res.DeviceSHA256 != img.SHA256() {
		t.Fatalf("result %+v", res)
	}
	if got := dev.AppFlash(); !bytes.Equal(got, img.Segments[0].Data) {
		t.Fatal("device flash differs from the image")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWrongSignatureRefused(t *testing.T) {
	dev := stk500test.New(stk500test.Uno())
	host, board := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go dev.Serve(ctx, board)
	defer host.Close()
	cfg := unoConfig()
	cfg.Signature = [3]byte{0x1e, 0x98, 0x01}
	err := stk500.New(host, cfg).Connect(ctx)
	if !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("err = %v, want ErrWrongDevice", err)
	}
	if dev.PagesWritten() != 0 {
		t.Fatal("wrote to the wrong device")
	}
}

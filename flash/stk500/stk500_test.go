package stk500_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/emutest"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
)

// connect serves dev on one end of a pipe and returns a connected client on
// the other; the client's reset line is the device's reset pin.
func connect(t testing.TB, dev *stk500test.Device, cfg stk500.Config) *stk500.Client {
	t.Helper()
	host := emutest.Serve(t, dev.Serve, true)
	cfg.Reset = func(context.Context) error { dev.Reset(); return nil }
	cfg.BootTime = time.Millisecond
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

// Every sync try pulses reset first; a silent board ends in a diagnosis
// that names the tries.
func TestSyncRetriesPulseResetEachTime(t *testing.T) {
	cfg := stk500test.Uno()
	cfg.Faults.StopAfter = 1
	dev := stk500test.New(cfg)
	host, board := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go dev.Serve(ctx, board)
	defer host.Close()
	resets := 0
	c := stk500.New(host, stk500.Config{Signature: cfg.Signature, Tries: 5, Timeout: 30 * time.Millisecond,
		Reset: func(context.Context) error { resets++; dev.Reset(); return nil }, BootTime: time.Millisecond})
	err := c.Connect(ctx)
	if !errors.Is(err, flash.ErrNoAnswer) || !strings.Contains(err.Error(), "stk500: no answer from bootloader after 5 tries") {
		t.Fatalf("err = %v", err)
	}
	if resets != 5 {
		t.Fatalf("%d resets for 5 tries", resets)
	}
}

// NOSYNC, a lost answer byte and a corrupted request byte each cost a
// resync and a retry of the page, not the flash.
func TestRecoversFromSingleFaults(t *testing.T) {
	for name, f := range map[string]stk500test.Faults{
		"nosync":     {Nack: 40},
		"drop-tx":    {DropTx: 101},
		"corrupt-rx": {CorruptRx: 1503}, // inside a page's data: only verification sees it
		"drop-rx":    {DropRx: 2000},
		"delay":      {DelayTx: 60, Delay: 400 * time.Millisecond},
	} {
		cfg := stk500test.Uno()
		cfg.Faults = f
		dev := stk500test.New(cfg)
		c := connect(t, dev, unoConfig())
		img := randomImage(7, 0, 4096)
		_, err := flash.Program(context.Background(), c, img, nil)
		if name == "corrupt-rx" {
			if !errors.Is(err, flash.ErrVerify) {
				t.Errorf("%s: err = %v, want ErrVerify", name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !bytes.Equal(dev.AppFlash()[:4096], img.Segments[0].Data) {
			t.Errorf("%s: device differs", name)
		}
	}
}

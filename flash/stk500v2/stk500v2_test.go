package stk500v2_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"net"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/emutest"
	"kiln.dev/kiln/flash/stk500v2"
	"kiln.dev/kiln/flash/stk500v2/stk500v2test"
)

func megaConfig() stk500v2.Config {
	return stk500v2.Config{Signature: [3]byte{0x1e, 0x98, 0x01}, PageSize: 256, FlashSize: 256 * 1024, Timeout: 200 * time.Millisecond}
}

func serve(t testing.TB, dev *stk500v2test.Device) net.Conn {
	t.Helper()
	return emutest.Serve(t, dev.Serve, true)
}

func connect(t testing.TB, dev *stk500v2test.Device, cfg stk500v2.Config) *stk500v2.Client {
	t.Helper()
	cfg.Reset = func(context.Context) error { dev.Reset(); return nil }
	cfg.BootTime = time.Millisecond
	c := stk500v2.New(serve(t, dev), cfg)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return c
}

func randomImage(seed int64, segs ...[2]int) *flash.Image {
	r := rand.New(rand.NewSource(seed))
	var ss []flash.Segment
	for _, s := range segs {
		data := make([]byte, s[1])
		r.Read(data)
		ss = append(ss, flash.Segment{Addr: uint32(s[0]), Data: data})
	}
	img, err := flash.NewImage("random", ss...)
	if err != nil {
		panic(err)
	}
	return img
}

func TestProgramPast64KWords(t *testing.T) {
	// 160 KiB crosses the 128 KiB line where load addresses need bit 31.
	dev := stk500v2test.New(stk500v2test.Mega2560())
	c := connect(t, dev, megaConfig())
	img := randomImage(2, [2]int{0, 160 * 1024})
	res, err := flash.Program(context.Background(), c, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified {
		t.Fatalf("%+v", res)
	}
	if got := dev.AppFlash()[:160*1024]; !bytes.Equal(got, img.Segments[0].Data) {
		t.Fatal("device flash differs from the image")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// The Mega bootloader erases pages in order from 0 whatever the address: an
// image with a gap and an offset start must still land intact, and the
// device's bytes outside the image must survive.
func TestProgramWithGapsKeepsOtherBytes(t *testing.T) {
	dev := stk500v2test.New(stk500v2test.Mega2560())
	old := make([]byte, 8192)
	rand.New(rand.NewSource(9)).Read(old)
	if err := dev.LoadAppFlash(old); err != nil {
		t.Fatal(err)
	}
	c := connect(t, dev, megaConfig())
	img := randomImage(3, [2]int{0x300, 700}, [2]int{0x1001, 333})
	if _, err := flash.Program(context.Background(), c, img, nil); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), old...)
	for _, s := range img.Segments {
		copy(want[s.Addr:], s.Data)
	}
	if got := dev.AppFlash()[:8192]; !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("first difference at 0x%x: got %02x want %02x", i, got[i], want[i])
			}
		}
	}
}

func TestWrongSignatureRefused(t *testing.T) {
	dev := stk500v2test.New(stk500v2test.Mega2560())
	cfg := megaConfig()
	cfg.Signature = [3]byte{0x1e, 0x95, 0x0f}
	err := stk500v2.New(serve(t, dev), cfg).Connect(context.Background())
	if !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("err = %v", err)
	}
}

func TestSilentDeviceIsNoAnswer(t *testing.T) {
	dev := stk500v2test.New(stk500v2test.Config{FlashSize: 1 << 18, PageSize: 256, BootStart: 0x3E000, Faults: stk500v2test.Faults{StopAfter: 1}})
	cfg := megaConfig()
	cfg.Tries, cfg.Timeout = 3, 50*time.Millisecond
	err := stk500v2.New(serve(t, dev), cfg).Connect(context.Background())
	if !errors.Is(err, flash.ErrNoAnswer) {
		t.Fatalf("err = %v", err)
	}
}

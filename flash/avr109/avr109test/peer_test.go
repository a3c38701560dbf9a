package avr109test_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/avr109"
	"kiln.dev/kiln/flash/avr109/avr109test"
	"kiln.dev/kiln/flash/device"
)

func leonardo(t *testing.T) (*boards.Board, avr109test.Config) {
	t.Helper()
	b, err := boards.Get("arduino-leonardo")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := avr109test.ForBoard(b)
	if err != nil {
		t.Fatal(err)
	}
	return b, cfg
}

func firmware(n int, seed int64) []byte {
	d := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(d)
	return d
}

// writeHex writes data at address 0 as Intel HEX.
func writeHex(t *testing.T, path string, data []byte) {
	t.Helper()
	var b strings.Builder
	for a := 0; a < len(data); a += 16 {
		n := min(16, len(data)-a)
		sum := byte(n) + byte(a>>8) + byte(a)
		fmt.Fprintf(&b, ":%02X%04X00", n, a)
		for _, x := range data[a : a+n] {
			fmt.Fprintf(&b, "%02X", x)
			sum += x
		}
		fmt.Fprintf(&b, "%02X\n", byte(-sum))
	}
	b.WriteString(":00000001FF\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestKilnWritesAndProves: kiln's client against the Caterina model over an
// in-memory line, an image with a gap and a partial last page.
func TestKilnWritesAndProves(t *testing.T) {
	b, cfg := leonardo(t)
	dev := avr109test.New(cfg)
	host, wire := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go dev.Serve(ctx, wire)
	sig, _ := b.AVRSignature()
	c := avr109.New(host, avr109.Config{Signature: sig, PageSize: 128})
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	img, err := flash.NewImage("fw", flash.Segment{Addr: 0, Data: firmware(5000, 1)}, flash.Segment{Addr: 0x6000, Data: firmware(77, 2)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := flash.Program(ctx, c, img, nil)
	if err != nil || !res.Verified {
		t.Fatalf("%+v %v", res, err)
	}
	app := dev.AppFlash()
	for _, s := range img.Segments {
		if !bytes.Equal(app[s.Addr:s.End()], s.Data) {
			t.Fatalf("flash at 0x%x differs", s.Addr)
		}
	}
	if !strings.Contains(c.Identity(), "CATERIN 1.0") {
		t.Errorf("identity %q", c.Identity())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	host.Close()
}

// TestWrongChipRefused: a Mega's signature behind the bootloader is refused
// before anything is written.
func TestWrongChipRefused(t *testing.T) {
	_, cfg := leonardo(t)
	cfg.Signature = [3]byte{0x1e, 0x98, 0x01}
	dev := avr109test.New(cfg)
	host, wire := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go dev.Serve(ctx, wire)
	c := avr109.New(host, avr109.Config{Signature: [3]byte{0x1e, 0x95, 0x87}})
	if err := c.Connect(ctx); !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("err = %v, want ErrWrongDevice", err)
	}
	if dev.PagesWritten() != 0 {
		t.Fatal("pages written")
	}
	host.Close()
}

// servePTY serves the Caterina model on a pty and returns the port.
func servePTY(t *testing.T, dev *avr109test.Device) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	name := tty.Name()
	tty.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { device.ServePTY(ctx, ptmx, dev); close(done) }()
	t.Cleanup(func() { cancel(); <-done; ptmx.Close() })
	return name
}

// TestAvrdudeAgrees: Debian's avrdude, "-c avr109", writes and verifies a
// sketch through the Caterina model on a pty, and kiln then reads the same
// bytes back and rewrites them through the back-end table.
func TestAvrdudeAgrees(t *testing.T) {
	if _, err := exec.LookPath("avrdude"); err != nil {
		t.Skip("avrdude is not installed (make deps installs it)")
	}
	b, cfg := leonardo(t)
	dev := avr109test.New(cfg)
	port := servePTY(t, dev)
	fw := firmware(3000, 3)
	hex := filepath.Join(t.TempDir(), "fw.hex")
	writeHex(t, hex, fw)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "avrdude", "-c", "avr109", "-p", "m32u4", "-P", port, "-b", "57600", "-D",
		"-U", "flash:w:"+hex+":i").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verified") {
		t.Fatalf("avrdude: %v\n%s", err, out)
	}
	if !bytes.Equal(dev.AppFlash()[:len(fw)], fw) {
		t.Fatalf("the model's flash is not what avrdude wrote\n%s", out)
	}
	// kiln on the same port, through the back-end table.
	s, err := device.Open(ctx, port, b, "", device.Options{Reset: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img, _ := flash.NewImage("fw", flash.Segment{Addr: 0, Data: fw})
	if res, err := flash.Verify(ctx, s, img, nil); err != nil || !res.Verified {
		t.Fatalf("kiln verify of avrdude's write: %+v %v", res, err)
	}
	img2, _ := flash.NewImage("fw2", flash.Segment{Addr: 0, Data: firmware(4000, 4)})
	if _, err := flash.Program(ctx, s, img2, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dev.AppFlash()[:4000], img2.Segments[0].Data) {
		t.Fatal("kiln's write is not in the model")
	}
}

// TestFaults: on a line that drops and corrupts bytes, kiln never reports
// a write it did not prove.
func TestFaults(t *testing.T) {
	b, cfg := leonardo(t)
	sig, _ := b.AVRSignature()
	var ok, failed int
	for i := 0; i < 40; i++ {
		cfg.Faults.Rate, cfg.Faults.Seed = 0.0005, int64(i)
		dev := avr109test.New(cfg)
		host, wire := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		go dev.Serve(ctx, wire)
		c := avr109.New(host, avr109.Config{Signature: sig, Timeout: 100 * time.Millisecond})
		img, _ := flash.NewImage("fw", flash.Segment{Addr: 0, Data: firmware(2000, int64(i))})
		err := c.Connect(ctx)
		var res flash.Result
		if err == nil {
			res, err = flash.Program(ctx, c, img, nil)
		}
		if err == nil {
			ok++
			if !res.Verified || !bytes.Equal(dev.AppFlash()[:2000], img.Segments[0].Data) {
				t.Fatalf("run %d reported success with other bytes in flash", i)
			}
		} else {
			failed++
		}
		cancel()
		host.Close()
	}
	t.Logf("%d proven, %d failed with an error", ok, failed)
	if ok == 0 {
		t.Fatal("no run got through")
	}
}

package stm32_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/stm32"
	"kiln.dev/kiln/flash/stm32/stm32test"
)

func board(t testing.TB, name string) *boards.Board {
	t.Helper()
	b, err := boards.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newDevice(t testing.TB, name string) *stm32test.Device {
	t.Helper()
	d, err := stm32test.New(board(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// serve runs d on one end of an in-process pipe and returns the other end.
// The pipe is closed and Serve awaited when the test ends.
func serve(t testing.TB, d *stm32test.Device) io.ReadWriter {
	t.Helper()
	host, dev := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = d.Serve(ctx, dev)
	}()
	t.Cleanup(func() {
		cancel()
		host.Close()
		dev.Close()
		wg.Wait()
	})
	return host
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

// fill gives the device's flash random old content, so erased and
// untouched bytes can be told apart.
func fill(t testing.TB, d *stm32test.Device, seed int64) []byte {
	t.Helper()
	b := d.Board
	old := randBytes(rand.New(rand.NewSource(seed)), int(b.Flash.Size))
	if err := d.SetMemory(b.Flash.Base, old); err != nil {
		t.Fatal(err)
	}
	return old
}

func open(t testing.TB, rw io.ReadWriter, b *boards.Board, opts stm32.Options) *stm32.Target {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tg, err := stm32.Open(ctx, rw, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// checkFlash proves the device holds img, that every byte outside the pages
// img touches kept its old content, that the rest of the touched pages is
// erased, and that exactly the touched pages were erased, once each.
func checkFlash(t *testing.T, d *stm32test.Device, img *flash.Image, old []byte) {
	t.Helper()
	b := d.Board
	got, err := d.Memory(b.Flash.Base, int(b.Flash.Size))
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), old...)
	touched := map[int]bool{}
	pages := d.Pages()
	for _, s := range img.Segments {
		for _, i := range boards.PagesIn(pages, s.Addr, len(s.Data)) {
			touched[i] = true
		}
	}
	for i := range touched {
		pg := pages[i]
		off := pg.Base - b.Flash.Base
		copy(want[off:off+pg.Size], bytes.Repeat([]byte{0xFF}, int(pg.Size)))
	}
	for _, s := range img.Segments {
		copy(want[s.Addr-b.Flash.Base:], s.Data)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("flash differs first at 0x%08x: 0x%02x, want 0x%02x", b.Flash.Base+uint32(i), got[i], want[i])
			}
		}
	}
	st := d.Stats()
	for i, n := range st.Erases {
		if want := map[bool]int{true: 1}[touched[i]]; n != want {
			t.Errorf("page %d (0x%08x) erased %d times, want %d", i, pages[i].Base, n, want)
		}
	}
}

func TestProgramBluepillWholeFlash(t *testing.T) {
	d := newDevice(t, "bluepill")
	old := fill(t, d, 1)
	rw := serve(t, d)
	b := d.Board
	tg := open(t, rw, b, stm32.Options{})
	data := randBytes(rand.New(rand.NewSource(2)), int(b.Flash.Size))
	img, err := flash.ParseBin("whole.bin", data, b.Flash.Base)
	if err != nil {
		t.Fatal(err)
	}
	res, err := flash.Program(context.Background(), tg, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || res.DeviceSHA256 != img.SHA256() {
		t.Fatalf("result %+v", res)
	}
	checkFlash(t, d, img, old)
	info := tg.Info()
	if info.PID != 0x410 || info.Version != 0x22 || !info.Lists(0x43) || info.Lists(0x44) {
		t.Errorf("info %+v", info)
	}
	if !strings.Contains(res.Device, "0x410") || !strings.Contains(res.Device, fmt.Sprintf("uid %x", d.UID[:])) {
		t.Errorf("identity %q does not name the product and unique id %x", res.Device, d.UID)
	}
	t.Logf("%s: %s", res.Device, res.DeviceSHA256)
}

func TestProgramLayouts(t *testing.T) {
	type seg struct {
		off uint32 // from flash base
		n   int
	}
	for _, tc := range []struct {
		board string
		name  string
		segs  []seg
	}{
		{"nucleo-f401re", "sectors 3-5 (16K, 64K, 128K)", []seg{{0xc000 - 100, 100 + 0x10000 + 5000}}},
		{"nucleo-f401re", "first sector only", []seg{{0, 1000}}},
		{"nucleo-f401re", "unaligned start and end", []seg{{0x4003, 1021}}},
		{"nucleo-f401re", "two segments in different sectors", []seg{{0x100, 700}, {0x60010, 3000}}},
		{"nucleo-f401re", "last sector end", []seg{{0x80000 - 513, 513}}},
		{"nucleo-f401re", "erased bytes in the image", []seg{{0x8000, 4096}}},
		{"bluepill", "middle pages", []seg{{0x2200, 3000}}},
		{"bluepill", "three segments, one page shared", []seg{{0x400, 10}, {0x420, 7}, {0x7000, 2048}}},
		{"bluepill", "last page", []seg{{0xfc00, 1024}}},
		{"bluepill", "odd length", []seg{{0x1000, 1}}},
	} {
		t.Run(tc.board+"/"+tc.name, func(t *testing.T) {
			t.Parallel()
			d := newDevice(t, tc.board)
			old := fill(t, d, 3)
			rw := serve(t, d)
			b := d.Board
			r := rand.New(rand.NewSource(int64(len(tc.name))))
			var segs []flash.Segment
			for _, s := range tc.segs {
				data := randBytes(r, s.n)
				if strings.Contains(tc.name, "erased") {
					for i := 256; i < 1024; i++ {
						data[i] = 0xFF
					}
				}
				segs = append(segs, flash.Segment{Addr: b.Flash.Base + s.off, Data: data})
			}
			img, err := flash.NewImage(tc.name, segs...)
			if err != nil {
				t.Fatal(err)
			}
			tg := open(t, rw, b, stm32.Options{})
			var phases []string
			res, err := flash.Program(context.Background(), tg, img, func(phase string, done, total int64) {
				if len(phases) == 0 || phases[len(phases)-1] != phase {
					phases = append(phases, phase)
				}
				if done > total {
					t.Errorf("%s: progress %d of %d", phase, done, total)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Verified {
				t.Fatalf("not verified: %+v", res)
			}
			checkFlash(t, d, img, old)
			if got := strings.Join(phases, ","); got != "erase,write,verify" {
				t.Errorf("progress phases %s", got)
			}
		})
	}
}

func TestWrongDevice(t *testing.T) {
	d := newDevice(t, "nucleo-f401re")
	rw := serve(t, d)
	_, err := stm32.Open(context.Background(), rw, board(t, "bluepill"), stm32.Options{})
	if !errors.Is(err, stm32.ErrWrongDevice) {
		t.Fatalf("got %v, want ErrWrongDevice", err)
	}
	if !strings.Contains(err.Error(), "0x433") || !strings.Contains(err.Error(), "bluepill") {
		t.Errorf("error %q does not name both devices", err)
	}
}

// silent is a port where nothing answers.
type silent struct {
	mu      sync.Mutex
	written int
	closed  chan struct{}
}

func (s *silent) Read(p []byte) (int, error) { <-s.closed; return 0, io.EOF }
func (s *silent) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.written += len(p)
	s.mu.Unlock()
	return len(p), nil
}

func TestNoBootloader(t *testing.T) {
	s := &silent{closed: make(chan struct{})}
	defer close(s.closed)
	start := time.Now()
	_, err := stm32.Open(context.Background(), s, board(t, "bluepill"), stm32.Options{Timeout: 50 * time.Millisecond, SyncTries: 3})
	if !errors.Is(err, flash.ErrNoAnswer) {
		t.Fatalf("got %v, want ErrNoAnswer", err)
	}
	for _, want := range []string{"stm32: no answer from bootloader", "BOOT0", "baud rate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))

	// A cancelled context ends the wait at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := stm32.Open(ctx, s, board(t, "bluepill"), stm32.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v", err)
	}
}

// TestBadInputs: an image that cannot go to the board fails before a byte
// of it is sent: the device sees no command after Open's.
func TestBadInputs(t *testing.T) {
	b := board(t, "bluepill")
	avr := avrELF(t)
	beyond, _ := flash.ParseBin("beyond.bin", make([]byte, 2048), b.Flash.Base+b.Flash.Size-1024)
	below, _ := flash.ParseBin("below.bin", make([]byte, 16), 0x07fffff0)
	empty := &flash.Image{Source: "empty.hex"}
	for _, img := range []*flash.Image{avr, beyond, below, empty} {
		t.Run(filepath.Base(img.Source), func(t *testing.T) {
			d := newDevice(t, "bluepill")
			rw := serve(t, d)
			tg := open(t, rw, b, stm32.Options{})
			before := d.Stats()
			_, err := flash.Program(context.Background(), tg, img, nil)
			if !errors.Is(err, flash.ErrBadImage) {
				t.Fatalf("got %v, want ErrBadImage", err)
			}
			after := d.Stats()
			if fmt.Sprint(before.Commands) != fmt.Sprint(after.Commands) {
				t.Errorf("commands went out: before %v, after %v", before.Commands, after.Commands)
			}
			t.Log(err)
		})
	}
}

// avrELF compiles a tiny program for the ATmega328P with avr-gcc.
func avrELF(t *testing.T) *flash.Image {
	t.Helper()
	gcc, err := exec.LookPath("avr-gcc")
	if err != nil {
		t.Fatalf("avr-gcc is needed (make deps installs gcc-avr): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "blink.c")
	if err := os.WriteFile(src, []byte("#include <avr/io.h>\nint main(void){DDRB=0x20;for(;;)PORTB^=0x20;}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "blink-uno.elf")
	if msg, err := exec.Command(gcc, "-mmcu=atmega328p", "-Os", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("avr-gcc: %v\n%s", err, msg)
	}
	img, err := flash.Load(out, flash.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestCRC32(t *testing.T) {
	// The STM32 CRC unit's published example: one word 0x12345678 after reset.
	if got := stm32.CRC32([]byte{0x78, 0x56, 0x34, 0x12}); got != 0xDF8A8A2B {
		t.Errorf("CRC32(0x12345678) = 0x%08x, want 0xdf8a8a2b", got)
	}
	if got := stm32.CRC32(nil); got != 0xFFFFFFFF {
		t.Errorf("CRC32() = 0x%08x, want the initial value", got)
	}
}

func TestVerifyChecksum(t *testing.T) {
	d := newDevice(t, "nucleo-f401re")
	d.Checksum = true
	fill(t, d, 4)
	rw := serve(t, d)
	b := d.Board
	tg := open(t, rw, b, stm32.Options{})
	r := rand.New(rand.NewSource(5))
	img, err := flash.NewImage("crc",
		flash.Segment{Addr: b.Flash.Base + 0x3ffe, Data: randBytes(r, 5003)}, // unaligned both ends, across sectors 0/1
		flash.Segment{Addr: b.Flash.Base + 0x20000, Data: randBytes(r, 4096)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := tg.Write(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	before := d.Stats().Commands[0x11]
	res, err := tg.VerifyChecksum(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || len(res.Regions) != 2 || res.Method != stm32.ChecksumMethod {
		t.Fatalf("result %+v", res)
	}
	for _, rc := range res.Regions {
		if rc.Device != rc.Image {
			t.Errorf("region %+v verified with different CRCs", rc)
		}
	}
	// Only the two edge words of the unaligned segment were read.
	if n := d.Stats().Commands[0x11] - before; n != 2 {
		t.Errorf("%d read commands, want 2 (edge words)", n)
	}
	// One flipped bit in the middle of a segment is found.
	a := b.Flash.Base + 0x20000 + 1000
	cell, _ := d.Memory(a, 1)
	if err := d.SetMemory(a, []byte{cell[0] ^ 0x10}); err != nil {
		t.Fatal(err)
	}
	if res, err = tg.VerifyChecksum(ctx, img, nil); !errors.Is(err, flash.ErrVerify) || res.Verified {
		t.Fatalf("after corrupting a byte: %v, %+v", err, res)
	}
	t.Log(err)
	// A flipped bit in an edge word, inside the image, is found too.
	if err := d.SetMemory(a, cell); err != nil {
		t.Fatal(err)
	}
	edge := b.Flash.Base + 0x3ffe
	cell, _ = d.Memory(edge, 1)
	d.SetMemory(edge, []byte{cell[0] ^ 1})
	if _, err = tg.VerifyChecksum(ctx, img, nil); !errors.Is(err, flash.ErrVerify) {
		t.Fatalf("after corrupting an edge byte: %v", err)
	}
	t.Log(err)

	// Without 0xA1 in the list the method is refused, not faked.
	d2 := newDevice(t, "nucleo-f401re")
	tg2 := open(t, serve(t, d2), b, stm32.Options{})
	if _, err := tg2.VerifyChecksum(ctx, img, nil); !errors.Is(err, stm32.ErrUnsupported) {
		t.Fatalf("without 0xa1: %v", err)
	}
}

// TestRecovery injects one fault at a chosen byte or command of a flash and
// proves the client recovers to a verified, correct device.
func TestRecovery(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    stm32test.Faults
		weak int
	}{
		// Bytes from the host: sync 1, Get 2, Get Version 2, Get ID 2,
		// unique ID read 9, erase 6 (17-22), then 266 per block write (data
		// from the 8th byte). Bytes to the host: 1 + 15 + 5 + 5 + 15 for
		// Open, 2 for the erase, 3 per block write (44-67), then 3 + 256 per
		// block read.
		{name: "drop a data byte of the first write", f: stm32test.Faults{DropRx: 23 + 7 + 100}},
		{name: "corrupt a data byte of the third write", f: stm32test.Faults{CorruptRx: 555 + 7 + 200}},
		{name: "drop the erase list's checksum", f: stm32test.Faults{DropRx: 22}},
		{name: "drop the ACK after the first write", f: stm32test.Faults{DropTx: 46}},
		{name: "corrupt the ACK after the second write", f: stm32test.Faults{CorruptTx: 49}},
		{name: "delay the third write's ACK past the timeout", f: stm32test.Faults{DelayTx: 52, Delay: 300 * time.Millisecond}},
		{name: "NACK the third write command", f: stm32test.Faults{Nack: 8}},
		{name: "drop a byte of a read reply", f: stm32test.Faults{DropTx: 68 + 3 + 100}},
		{name: "drop a byte of the unique id", f: stm32test.Faults{DropTx: 35}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newDevice(t, "bluepill")
			d.Faults = tc.f
			d.WeakBit = tc.weak
			old := fill(t, d, 6)
			rw := serve(t, d)
			b := d.Board
			img, _ := flash.ParseBin("x.bin", randBytes(rand.New(rand.NewSource(7)), 2000), b.Flash.Base+0x800)
			var notes []string
			tg := open(t, rw, b, stm32.Options{Timeout: 100 * time.Millisecond, Note: func(f string, a ...any) {
				notes = append(notes, fmt.Sprintf(f, a...))
			}})
			res, err := flash.Program(context.Background(), tg, img, nil)
			if err != nil {
				t.Fatalf("%v (notes %q)", err, notes)
			}
			if len(notes) == 0 {
				t.Errorf("the fault was not noticed: it missed its target")
			}
			if !res.Verified {
				t.Fatalf("not verified")
			}
			got, _ := d.Memory(img.Segments[0].Addr, 2000)
			if !bytes.Equal(got, img.Segments[0].Data) {
				t.Fatal("device differs from a verified image")
			}
			_ = old
			t.Logf("notes: %q", notes)
		})
	}
}

// TestWeakCell: a device that ACKs a write but keeps one bit unprogrammed
// is caught by the read-back, with ErrVerify.
func TestWeakCell(t *testing.T) {
	d := newDevice(t, "bluepill")
	d.WeakBit = 3
	rw := serve(t, d)
	b := d.Board
	img, _ := flash.ParseBin("x.bin", randBytes(rand.New(rand.NewSource(8)), 4096), b.Flash.Base)
	tg := open(t, rw, b, stm32.Options{})
	res, err := flash.Program(context.Background(), tg, img, nil)
	if !errors.Is(err, flash.ErrVerify) || res.Verified {
		t.Fatalf("got %v, %+v; want ErrVerify", err, res)
	}
	if res.DeviceSHA256 == res.ImageSHA256 || res.DeviceSHA256 == "" {
		t.Errorf("device hash %q should be the device's, not the image's %q", res.DeviceSHA256, res.ImageSHA256)
	}
	t.Log(err)
}

// TestFaultInjection: many flashes with random faults. No flash may report
// success unless the device holds the image; every failure is a clear,
// classified error.
func TestFaultInjection(t *testing.T) {
	const runs = 120
	var mu sync.Mutex
	var ok, failed int
	kinds := map[string]int{}
	rates := []float64{0, 2e-4, 5e-4, 1e-3, 3e-3}
	// The runs mostly wait for timeouts: run eight at a time whatever
	// -parallel says (t.Run may be called from several goroutines).
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	defer wg.Wait()
	for seed := int64(1); seed <= runs; seed++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t.Run(fmt.Sprint(seed), func(t *testing.T) { faultRun(t, seed, rates, &mu, &ok, &failed, kinds) })
		}()
	}
	t.Cleanup(func() {
		t.Logf("%d flashes with faults: %d verified successes, %d clear failures %v", runs, ok, failed, kinds)
		if ok == 0 || failed == 0 {
			t.Errorf("the fault mix should give both outcomes: %d ok, %d failed", ok, failed)
		}
	})
}

func faultRun(t *testing.T, seed int64, rates []float64, mu *sync.Mutex, ok, failed *int, kinds map[string]int) {
	r := rand.New(rand.NewSource(seed))
	name := []string{"bluepill", "nucleo-f401re"}[r.Intn(2)]
	d := newDevice(t, name)
	b := d.Board
	d.Faults = stm32test.Faults{Seed: seed, Rate: rates[r.Intn(len(rates))], Delay: time.Duration(r.Intn(250)) * time.Millisecond}
	if r.Intn(8) == 0 {
		d.Faults.StopAfter = 50 + r.Intn(6000)
	}
	if r.Intn(10) == 0 {
		d.WeakBit = 1 + r.Intn(10)
	}
	fill(t, d, seed)
	rw := serve(t, d)
	size := 64 + r.Intn(6000)
	off := uint32(r.Intn(int(b.Flash.Size) - size))
	if name == "nucleo-f401re" {
		off = uint32(r.Intn(0x10000 - size)) // the small sectors: fast to erase
	}
	img, _ := flash.ParseBin("fault.bin", randBytes(r, size), b.Flash.Base+off)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tg, err := stm32.Open(ctx, rw, b, stm32.Options{Timeout: 100 * time.Millisecond, Note: func(f string, a ...any) {
		t.Logf("note: "+f, a...)
	}})
	var res flash.Result
	if err == nil {
		res, err = flash.Program(ctx, tg, img, nil)
	}
	got, merr := d.Memory(img.Segments[0].Addr, size)
	if merr != nil {
		t.Fatal(merr)
	}
	mu.Lock()
	defer mu.Unlock()
	if err == nil {
		*ok++
		if !res.Verified || !bytes.Equal(got, img.Segments[0].Data) {
			t.Fatalf("reported success, but the device differs from the image (faults %+v)", d.Faults)
		}
		return
	}
	*failed++
	msg := err.Error()
	var kind string
	switch {
	case errors.Is(err, flash.ErrVerify):
		kind = "verify"
	case errors.Is(err, flash.ErrNoAnswer):
		kind = "no answer"
	case errors.Is(err, stm32.ErrNACK):
		kind = "nack"
	case errors.Is(err, stm32.ErrGarbled):
		kind = "garbled"
	default:
		t.Errorf("unclassified error: %v", err)
	}
	kinds[kind]++
	if !strings.Contains(msg, "stm32: ") && !strings.Contains(msg, "first difference at") {
		t.Errorf("error does not say where it comes from: %v", err)
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines: %q", msg)
	}
	t.Logf("%s: %v", kind, err)
}

// TestContextDeadline: a device that goes silent in the middle of a write
// cannot hold the flash past the caller's deadline.
func TestContextDeadline(t *testing.T) {
	d := newDevice(t, "bluepill")
	d.Faults = stm32test.Faults{StopAfter: 400} // during the second block
	rw := serve(t, d)
	b := d.Board
	tg := open(t, rw, b, stm32.Options{Timeout: 5 * time.Second})
	img, _ := flash.ParseBin("x.bin", randBytes(rand.New(rand.NewSource(9)), 4096), b.Flash.Base)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := flash.Program(ctx, tg, img, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's deadline", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("returned %v after a 300ms deadline", el)
	}
	t.Log(err)
}

package dfu_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu"
	"kiln.dev/kiln/flash/dfu/dfutest"
)

// f401 returns the model of a NUCLEO-F401RE in its ROM bootloader (flash
// holding a previous program) and a Target on it.
func f401(t testing.TB) (*dfutest.Device, *dfu.Target) {
	t.Helper()
	b, err := boards.Get("nucleo-f401re")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := dfutest.ForBoard(b)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := dfu.New(dev, dev.Descriptor())
	if err != nil {
		t.Fatal(err)
	}
	return dev, tg
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

func newTarget(t testing.TB, dev *dfutest.Device) (*dfu.Target, error) {
	t.Helper()
	tg, err := dfu.New(dev, dev.Descriptor())
	if err != nil {
		t.Fatal(err)
	}
	return tg, nil
}

// f401Sectors is the STM32F401RE sector map, written out independently of
// the layout parser.
var f401Sectors = []struct{ addr, size uint32 }{
	{0x08000000, 0x4000}, {0x08004000, 0x4000}, {0x08008000, 0x4000}, {0x0800c000, 0x4000},
	{0x08010000, 0x10000}, {0x08020000, 0x20000}, {0x08040000, 0x20000}, {0x08060000, 0x20000},
}

func touched(img *flash.Image) []uint32 {
	var out []uint32
	for _, s := range f401Sectors {
		for _, seg := range img.Segments {
			if uint64(seg.Addr) < uint64(s.addr)+uint64(s.size) && seg.End() > uint64(s.addr) {
				out = append(out, s.addr)
				break
			}
		}
	}
	return out
}

// TestFlows writes images of different places and sizes to the model —
// erase, write, read-back proof, leave — then resets the device into its
// bootloader and proves the content again, and checks the model's memory
// directly: the image is there, the rest of each erased sector is blank,
// untouched sectors keep the previous program.
func TestFlows(t *testing.T) {
	type seg struct {
		addr uint32
		n    int
	}
	cases := []struct {
		name string
		segs []seg
	}{
		{"one byte at the base", []seg{{0x08000000, 1}}},
		{"3000 bytes in sector 0", []seg{{0x08000000, 3000}}},
		{"unaligned across 16K sectors", []seg{{0x08003ffd, 4101}}},
		{"16K to 64K to 128K sectors", []seg{{0x0800f000, 0x22000}}},
		{"two segments far apart", []seg{{0x08000000, 1024}, {0x08041234, 5000}}},
		{"the last byte of flash", []seg{{0x0807ffff, 1}}},
		{"all 512 KiB", []seg{{0x08000000, 512 << 10}}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			var segs []flash.Segment
			for _, s := range tc.segs {
				segs = append(segs, flash.Segment{Addr: s.addr, Data: randBytes(r, s.n)})
			}
			img, err := flash.NewImage(tc.name, segs...)
			if err != nil {
				t.Fatal(err)
			}
			dev, tg := f401(t)
			before, _ := dev.Memory(0x08000000, 512<<10)
			ctx := context.Background()
			res, err := flash.Program(ctx, tg, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Verified || res.DeviceSHA256 != img.SHA256() {
				t.Fatalf("result %+v", res)
			}
			st := dev.Stats()
			if want := touched(img); !slices.Equal(st.Erased, want) {
				t.Errorf("erased sectors %#x, want exactly %#x", st.Erased, want)
			}
			if err := tg.Leave(ctx, 0x08000000); err != nil {
				t.Fatal(err)
			}
			if left, at := dev.Left(); !left || at != 0x08000000 {
				t.Fatalf("device left=%v at %#x, want it to jump to 0x08000000", left, at)
			}
			if _, err := tg.ReadBack(ctx, flash.Region{Addr: 0x08000000, Size: 4}, nil); !errors.Is(err, flash.ErrNoDevice) {
				t.Fatalf("read after leave: %v, want ErrNoDevice", err)
			}
			// Reset into the bootloader and prove the content with a new session.
			dev.Reset()
			tg2, err := dfu.New(dev, dev.Descriptor())
			if err != nil {
				t.Fatal(err)
			}
			if res, err := flash.Verify(ctx, tg2, img, nil); err != nil || !res.Verified {
				t.Fatalf("verify after leave and reset: %+v %v", res, err)
			}
			// Ground truth.
			after, _ := dev.Memory(0x08000000, 512<<10)
			want := slices.Clone(before)
			erased := dev.Stats().Erased
			for _, s := range f401Sectors {
				if slices.Contains(erased, s.addr) {
					copy(want[s.addr-0x08000000:], bytes.Repeat([]byte{0xff}, int(s.size)))
				}
			}
			for _, s := range img.Segments {
				copy(want[s.Addr-0x08000000:], s.Data)
			}
			if !bytes.Equal(after, want) {
				t.Fatal("flash content differs from previous program + erased sectors + image")
			}
		})
	}
}

// TestProgramTimingHonoursPollTimeout runs with real (shortened) erase and
// program times: the host must wait bwPollTimeout and never poll a busy
// device.
func TestProgramTimingHonoursPollTimeout(t *testing.T) {
	dev, tg := f401(t)
	dev.SetTiming(dfutest.Timing{
		Erase:       map[uint32]time.Duration{16 << 10: 3 * time.Millisecond, 64 << 10: 5 * time.Millisecond, 128 << 10: 8 * time.Millisecond},
		ProgramWord: 2 * time.Microsecond,
	})
	img, _ := flash.NewImage("t", flash.Segment{Addr: 0x0800c000, Data: randBytes(rand.New(rand.NewPCG(9, 9)), 0x18000)})
	if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
		t.Fatal(err)
	}
	st := dev.Stats()
	if st.EarlyPolls != 0 {
		t.Errorf("%d requests reached the device while it was busy: bwPollTimeout not honoured", st.EarlyPolls)
	}
	if st.Busy < 16*time.Millisecond {
		t.Errorf("model busy %v, want the erase and program times", st.Busy)
	}
}

func TestMassErase(t *testing.T) {
	dev, tg := f401(t)
	tg.MassErase = true
	img, _ := flash.NewImage("t", flash.Segment{Addr: 0x08004000, Data: randBytes(rand.New(rand.NewPCG(3, 3)), 70000)})
	if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
		t.Fatal(err)
	}
	st := dev.Stats()
	if st.MassErases != 1 || len(st.Erased) != 0 {
		t.Errorf("mass erases %d, sector erases %v; want one mass erase", st.MassErases, st.Erased)
	}
	rest, _ := dev.Memory(0x08040000, 0x40000)
	if !bytes.Equal(rest, bytes.Repeat([]byte{0xff}, 0x40000)) {
		t.Error("mass erase left the previous program in sectors 6 and 7")
	}
}

// TestVerifyReadsOnly: a verify erases and writes nothing.
func TestVerifyReadsOnly(t *testing.T) {
	dev, tg := f401(t)
	old, _ := dev.Memory(0x08010000, 0x1000)
	img, _ := flash.NewImage("t", flash.Segment{Addr: 0x08010000, Data: old})
	res, err := flash.Verify(context.Background(), tg, img, nil)
	if err != nil || !res.Verified {
		t.Fatalf("%+v %v", res, err)
	}
	other, _ := flash.NewImage("t", flash.Segment{Addr: 0x08010000, Data: bytes.Repeat([]byte{0x5a}, 0x1000)})
	if _, err := flash.Verify(context.Background(), tg, other, nil); !errors.Is(err, flash.ErrVerify) {
		t.Fatalf("verify of different content: %v, want ErrVerify", err)
	}
	st := dev.Stats()
	if st.BytesWritten != 0 || len(st.Erased) != 0 || st.MassErases != 0 {
		t.Errorf("verify wrote %d bytes, erased %v", st.BytesWritten, st.Erased)
	}
	if st.BytesRead != 0x2000 {
		t.Errorf("verify read %d bytes, want %d", st.BytesRead, 0x2000)
	}
}

// TestBadInputs: images the device cannot take are refused before any
// transfer.
func TestBadInputs(t *testing.T) {
	alts := append([]string{}, dfutest.F401Alts...)
	alts = append(alts, "@System Memory /0x1FFF0000/01*030Ka")
	cases := []struct {
		name string
		seg  flash.Segment
		want string
	}{
		{"past the end of flash", flash.Segment{Addr: 0x0807ff00, Data: make([]byte, 0x200)}, "outside every memory"},
		{"outside every memory", flash.Segment{Addr: 0x30000000, Data: []byte{1}}, "outside every memory"},
		{"in RAM", flash.Segment{Addr: 0x20000000, Data: []byte{1, 2, 3}}, "outside every memory"},
		{"read-only system memory", flash.Segment{Addr: 0x1fff0100, Data: []byte{1}}, "not writable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := dfutest.New(dfutest.Config{VID: 0x0483, PID: 0xdf11, Alts: alts})
			if err != nil {
				t.Fatal(err)
			}
			tg, err := dfu.New(dev, dev.Descriptor())
			if err != nil {
				t.Fatal(err)
			}
			img, _ := flash.NewImage(tc.name, flash.Segment{Addr: 0x08000000, Data: []byte{1}}, tc.seg)
			_, err = flash.Program(context.Background(), tg, img, nil)
			if !errors.Is(err, flash.ErrBadImage) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("err = %v, want ErrBadImage saying %q", err, tc.want)
			}
			if n := dev.Stats().Transfers; n != 0 {
				t.Fatalf("%d transfers before the refusal, want 0", n)
			}
			t.Log(err)
		})
	}
	t.Run("read of an absent region", func(t *testing.T) {
		dev, tg := f401(t)
		if _, err := tg.ReadBack(context.Background(), flash.Region{Addr: 0x08080000, Size: 16}, nil); !errors.Is(err, flash.ErrBadImage) {
			t.Fatalf("err = %v", err)
		}
		if n := dev.Stats().Transfers; n != 0 {
			t.Fatalf("%d transfers, want 0", n)
		}
	})
	t.Run("not DfuSe", func(t *testing.T) {
		_, err := dfu.New(nil, dfu.Descriptor{VID: 1, PID: 2, DFUVersion: 0x0110, Alts: []string{"flash"}})
		if err == nil {
			t.Fatal("a DFU 1.1 device without DfuSe was accepted")
		}
	})
}

// TestRecovery injects one fault of each kind: the operation is recovered
// (CLRSTATUS out of dfuERROR, ABORT out of the upload and download states)
// and retried, and the result is right.
func TestRecovery(t *testing.T) {
	for _, kind := range []string{"Stall", "WrongState", "WriteError", "ShortUpload"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			dev, tg := f401(t)
			f := dfutest.Faults{Rand: rand.New(rand.NewPCG(1, 2)), Max: 1}
			switch kind {
			case "Stall":
				f.Stall = 0.2
			case "WrongState":
				f.WrongState = 1
			case "WriteError":
				f.WriteError = 1
			case "ShortUpload":
				f.ShortUpload = 1
			}
			dev.Faults = f
			img, _ := flash.NewImage("t", flash.Segment{Addr: 0x08000000, Data: randBytes(rand.New(rand.NewPCG(5, 5)), 9000)})
			if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
				t.Fatal(err)
			}
			st := dev.Stats()
			if st.Injected[kind] != 1 || tg.Recovered < 1 {
				t.Fatalf("injected %v, recovered %d", st.Injected, tg.Recovered)
			}
			got, _ := dev.Memory(0x08000000, 9000)
			if !bytes.Equal(got, img.Segments[0].Data) {
				t.Fatal("content differs after a recovered fault")
			}
			if kind == "Stall" && st.Requests[dfu.ReqClrStatus] == 0 {
				t.Error("a stall was recovered without CLRSTATUS")
			}
			if kind == "ShortUpload" && st.Requests[dfu.ReqAbort] == 0 {
				t.Error("no ABORT")
			}
		})
	}
}

// TestSilentCorruption: damage no protocol can see is caught by the
// read-back, and reported as flash.ErrVerify (exit 3).
func TestSilentCorruption(t *testing.T) {
	for _, kind := range []string{"CorruptWrite", "CorruptUpload"} {
		t.Run(kind, func(t *testing.T) {
			dev, tg := f401(t)
			f := dfutest.Faults{Rand: rand.New(rand.NewPCG(7, 7)), Max: 1}
			if kind == "CorruptWrite" {
				f.CorruptWrite = 1
			} else {
				f.CorruptUpload = 1
			}
			dev.Faults = f
			img, _ := flash.NewImage("t", flash.Segment{Addr: 0x08000000, Data: bytes.Repeat([]byte{0xa5}, 5000)})
			res, err := flash.Program(context.Background(), tg, img, nil)
			if !errors.Is(err, flash.ErrVerify) || res.Verified {
				t.Fatalf("Program = %+v, %v; want ErrVerify", res, err)
			}
		})
	}
}

// TestRandomFaults runs 128 seeded programs of random images with every
// kind of fault injected at random. Whatever happens, a reported success
// means the device holds the image; recoverable faults are recovered.
func TestRandomFaults(t *testing.T) {
	const runs = 128
	ok, verifyErrs, recovered, injected := 0, 0, 0, 0
	for seed := uint64(0); seed < runs; seed++ {
		r := rand.New(rand.NewPCG(seed, 0xdf11))
		dev, tg := f401(t)
		silent := seed%4 == 3 // every fourth run may also corrupt silently
		f := dfutest.Faults{Rand: rand.New(rand.NewPCG(seed, 1)),
			Stall: 0.02, WrongState: 0.02, WriteError: 0.03, ShortUpload: 0.03}
		if silent {
			f.CorruptWrite, f.CorruptUpload = 0.01, 0.01
		}
		dev.Faults = f
		var segs []flash.Segment
		for k := range 1 + r.IntN(2) {
			addr := 0x08000000 + uint32(k)<<18 + uint32(r.IntN(250<<10))
			n := 1 + r.IntN(24<<10)
			if uint64(addr)+uint64(n) > 0x08080000 {
				n = 0x08080000 - int(addr)
			}
			segs = append(segs, flash.Segment{Addr: addr, Data: randBytes(r, n)})
		}
		img, err := flash.NewImage(fmt.Sprint("seed ", seed), segs...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = flash.Program(context.Background(), tg, img, nil)
		st := dev.Stats()
		for _, v := range st.Injected {
			injected += v
		}
		recovered += tg.Recovered
		if errors.Is(err, flash.ErrVerify) {
			verifyErrs++
		}
		if err != nil {
			if !silent && errors.Is(err, flash.ErrVerify) {
				t.Errorf("seed %d: verify failed without silent corruption: %v", seed, err)
			}
			t.Logf("seed %d: reported failure: %v (injected %v)", seed, err, st.Injected)
			continue
		}
		ok++
		for _, s := range img.Segments {
			got, _ := dev.Memory(s.Addr, len(s.Data))
			if !bytes.Equal(got, s.Data) {
				t.Fatalf("seed %d: success reported but the device holds other bytes at 0x%x (injected %v)", seed, s.Addr, st.Injected)
			}
		}
	}
	t.Logf("%d runs: %d verified, %d verify mismatches reported, %d faults injected, %d operations recovered", runs, ok, verifyErrs, injected, recovered)
	if ok < runs*3/4 || recovered == 0 || injected == 0 {
		t.Errorf("only %d of %d runs succeeded (recovered %d, injected %d)", ok, runs, recovered, injected)
	}
}

// TestAltChoice: one image with bytes in the internal flash (alt 0) and in
// the OTP area (alt 2, writable but not erasable): each part goes through
// its own alternate setting, and only flash sectors are erased.
func TestAltChoice(t *testing.T) {
	dev, tg := f401(t)
	otp := []byte("kiln serial 0001")
	img, err := flash.NewImage("t",
		flash.Segment{Addr: 0x08000000, Data: bytes.Repeat([]byte{0x11}, 100)},
		flash.Segment{Addr: 0x1fff7800, Data: otp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
		t.Fatal(err)
	}
	st := dev.Stats()
	if !slices.Equal(st.Erased, []uint32{0x08000000}) {
		t.Errorf("erased %#x, want only flash sector 0", st.Erased)
	}
	if st.SetAlts < 2 {
		t.Errorf("%d alternate setting changes, want the OTP written through alt 2", st.SetAlts)
	}
	if got, _ := dev.Memory(0x1fff7800, len(otp)); !bytes.Equal(got, otp) {
		t.Errorf("OTP holds %q", got)
	}
}

// TestFaultStorm: with faults on one request in five or so, many runs
// fail, but every failure is reported as an error and every reported
// success is real.
func TestFaultStorm(t *testing.T) {
	ok, failed := 0, 0
	for seed := uint64(0); seed < 100; seed++ {
		dev, tg := f401(t)
		dev.Faults = dfutest.Faults{Rand: rand.New(rand.NewPCG(seed, 2)),
			Stall: 0.08, WrongState: 0.08, WriteError: 0.1, ShortUpload: 0.1, CorruptWrite: 0.01, CorruptUpload: 0.01}
		tg.Retries = 2
		r := rand.New(rand.NewPCG(seed, 3))
		img, _ := flash.NewImage("storm", flash.Segment{Addr: 0x0800e000 + uint32(r.IntN(0x4000)), Data: randBytes(r, 1+r.IntN(12<<10))})
		_, err := flash.Program(context.Background(), tg, img, nil)
		if err != nil {
			failed++
			continue
		}
		ok++
		got, _ := dev.Memory(img.Segments[0].Addr, len(img.Segments[0].Data))
		if !bytes.Equal(got, img.Segments[0].Data) {
			t.Fatalf("seed %d: success reported with wrong content", seed)
		}
	}
	t.Logf("100 runs under a fault storm: %d verified, %d reported errors", ok, failed)
	if ok == 0 || failed == 0 {
		t.Errorf("the storm should produce both outcomes (ok %d, failed %d)", ok, failed)
	}
}

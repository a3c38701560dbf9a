package swd_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/swd"
	"kiln.dev/kiln/flash/swd/swdtest"
)

func boardByName(name string) (*boards.Board, error) { return boards.Get(name) }

func board(t *testing.T, name string) *boards.Board {
	t.Helper()
	b, err := boardByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func image(t *testing.T, seed int64, segs ...[2]int) *flash.Image {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	var ss []flash.Segment
	for _, s := range segs {
		d := make([]byte, s[1])
		r.Read(d)
		ss = append(ss, flash.Segment{Addr: uint32(s[0]), Data: d})
	}
	img, err := flash.NewImage("test", ss...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// probes are the two probe models: CMSIS-DAP and ST-LINK.
var probes = []string{"cmsis-dap", "st-link"}

// connect opens b's chip behind a probe model of kind; faults go to the
// probe.
func connect(ctx context.Context, kind string, chip *swdtest.Chip, b *boards.Board, faults swdtest.Faults, opts swd.Options) (*swdtest.Probe, *swd.Target, error) {
	if kind == "st-link" {
		st := swdtest.NewSTLink(chip, "066DFF495150")
		st.P.Faults = faults
		tg, err := swd.OpenSTLink(ctx, st, "ST-LINK/V2-1", "066DFF495150", b, opts)
		return st.P, tg, err
	}
	p := swdtest.NewProbe(chip, "KILNPROBE1")
	p.Faults = faults
	tg, err := swd.Open(ctx, p, b, opts)
	return p, tg, err
}

func open(t *testing.T, name string) (*swdtest.Chip, *swdtest.Probe, *swd.Target) {
	return openKind(t, "cmsis-dap", name)
}

func openKind(t *testing.T, kind, name string) (*swdtest.Chip, *swdtest.Probe, *swd.Target) {
	t.Helper()
	b := board(t, name)
	chip, err := swdtest.NewChip(b)
	if err != nil {
		t.Fatal(err)
	}
	p, tg, err := connect(context.Background(), kind, chip, b, swdtest.Faults{}, swd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return chip, p, tg
}

// TestProgramBothFamilies writes and proves images on an F401 (sectors of
// 16, 64 and 128 KiB, word programming) and an F103 (1 KiB pages, half-word
// programming), with segments at odd offsets and across 1 KiB TAR blocks,
// through both probes.
func TestProgramBothFamilies(t *testing.T) {
	for _, tc := range []struct {
		board, probe string
		segs         [][2]int
	}{
		{"nucleo-f401re", "cmsis-dap", [][2]int{{0x08000000, 70000}, {0x08012001, 333}}},
		{"bluepill", "cmsis-dap", [][2]int{{0x08000000, 5000}, {0x08003ff3, 77}}},
		{"nucleo-f401re", "st-link", [][2]int{{0x08000000, 70000}, {0x08012001, 333}}},
		{"bluepill", "st-link", [][2]int{{0x08000000, 5000}, {0x08003ff3, 77}}},
	} {
		t.Run(tc.board+"/"+tc.probe, func(t *testing.T) {
			chip, probe, tg := openKind(t, tc.probe, tc.board)
			img := image(t, 1, tc.segs...)
			res, err := flash.Program(context.Background(), tg, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Verified || res.DeviceSHA256 != img.SHA256() {
				t.Fatalf("result %+v", res)
			}
			for _, s := range img.Segments {
				if got := chip.Page(s.Addr, len(s.Data)); !bytes.Equal(got, s.Data) {
					t.Fatalf("flash at 0x%x differs from the image", s.Addr)
				}
			}
			if err := tg.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d packets, identity %s", tc.board, probe.Packets, tg.Identity())
		})
	}
}

// TestEraseOnlyTouchedSectors: an image over sectors 3 (16 KiB) and 4
// (64 KiB) of an F401 erases exactly those two; the bytes of sector 2 stay.
func TestEraseOnlyTouchedSectors(t *testing.T) {
	chip, _, tg := open(t, "nucleo-f401re")
	keep := image(t, 2, [2]int{0x08008000, 16384})
	if _, err := flash.Program(context.Background(), tg, keep, nil); err != nil {
		t.Fatal(err)
	}
	for k := range chip.Erased {
		delete(chip.Erased, k)
	}
	img := image(t, 3, [2]int{0x0800C000 + 100, 16384}) // sector 3 into sector 4
	if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
		t.Fatal(err)
	}
	if len(chip.Erased) != 2 || chip.Erased[3] != 1 || chip.Erased[4] != 1 {
		t.Fatalf("erased sectors %v, want 3 and 4 once each", chip.Erased)
	}
	if !bytes.Equal(chip.Page(0x08008000, 16384), keep.Segments[0].Data) {
		t.Fatal("sector 2 changed")
	}
}

// TestWrongChipRefused: a Blue Pill image sent to an F401 is refused before
// any erase, and an unknown DEV_ID too.
func TestWrongChipRefused(t *testing.T) {
	f401, err := swdtest.NewChip(board(t, "nucleo-f401re"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = swd.Open(context.Background(), swdtest.NewProbe(f401, "P"), board(t, "bluepill"), swd.Options{})
	if !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("err = %v, want ErrWrongDevice", err)
	}
	f401.DevID = 0x999
	_, err = swd.Open(context.Background(), swdtest.NewProbe(f401, "P"), board(t, "nucleo-f401re"), swd.Options{})
	if !errors.Is(err, flash.ErrWrongDevice) || !errors.Is(err, swd.ErrUnknownChip) {
		t.Fatalf("err = %v, want ErrWrongDevice and ErrUnknownChip", err)
	}
	if len(f401.Erased) != 0 {
		t.Fatalf("erased %v before refusing", f401.Erased)
	}
}

// TestReadOutProtection: RDP level 1 is refused with its meaning and nothing
// is erased; with Unprotect the chip is mass-erased and then written.
func TestReadOutProtection(t *testing.T) {
	for _, name := range []string{"nucleo-f401re", "bluepill"} {
		t.Run(name, func(t *testing.T) {
			b := board(t, name)
			chip, err := swdtest.NewChip(b)
			if err != nil {
				t.Fatal(err)
			}
			copy(chip.Flash, "secret firmware")
			chip.Protect()
			_, err = swd.Open(context.Background(), swdtest.NewProbe(chip, "P"), b, swd.Options{})
			if !errors.Is(err, swd.ErrProtected) || !bytes.Contains([]byte(err.Error()), []byte("erases the whole flash")) {
				t.Fatalf("err = %v, want ErrProtected naming the mass erase", err)
			}
			if !bytes.HasPrefix(chip.Flash, []byte("secret firmware")) {
				t.Fatal("flash changed without --unprotect")
			}
			tg, err := swd.Open(context.Background(), swdtest.NewProbe(chip, "P"), b, swd.Options{Unprotect: true})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.HasPrefix(chip.Flash, []byte("secret")) {
				t.Fatal("unprotect did not mass-erase")
			}
			img := image(t, 4, [2]int{int(b.Flash.Base), 3000})
			if _, err := flash.Program(context.Background(), tg, img, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFaultRuns flashes 240 times, half through each probe model, through
// probes that lose answers, answer
// WAIT and FAULT, unplug and reset targets mid-write. No run may report
// success with other bytes in flash; every failure is an error.
func TestFaultRuns(t *testing.T) {
	var ok, failed, recovered int
	for i := 0; i < 240; i++ {
		name := []string{"nucleo-f401re", "bluepill"}[i%2]
		b := board(t, name)
		chip, err := swdtest.NewChip(b)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewSource(int64(i)))
		faults := swdtest.Faults{Seed: int64(i), Wait: r.Float64() * 0.005, Fault: r.Float64() * 0.005, Lost: r.Float64() * 0.002}
		switch i % 8 {
		case 3:
			faults.UnplugAfter = 20 + r.Intn(200)
		case 5:
			faults.ResetAfter = 20 + r.Intn(200)
		}
		img := image(t, int64(i), [2]int{int(b.Flash.Base) + r.Intn(4096), 2000 + r.Intn(9000)})
		ctx := context.Background()
		var res flash.Result
		probe, tg, err := connect(ctx, probes[(i/2)%2], chip, b, faults, swd.Options{})
		if err == nil {
			res, err = flash.Program(ctx, tg, img, nil)
		}
		if err != nil {
			failed++
			if failed < 12 {
				t.Logf("run %d (%s, %+v): %v", i, name, probe.Faults, err)
			}
			continue
		}
		ok++
		if probe.Faults.Wait+probe.Faults.Fault+probe.Faults.Lost > 0 {
			recovered++
		}
		s := img.Segments[0]
		if !res.Verified || !bytes.Equal(chip.Page(s.Addr, len(s.Data)), s.Data) {
			t.Fatalf("run %d reported success but the flash differs from the image", i)
		}
	}
	t.Logf("%d proven, %d failed with an error, %d proven despite injected faults", ok, failed, recovered)
	if ok < 100 || recovered < 50 {
		t.Fatalf("only %d runs proven (%d through faults): recovery does not work", ok, recovered)
	}
}

package dfu_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu/dfutest"
)

// TestLeaveOnlyWhenProven: Close starts the program after a write that was
// read back unchanged, and never after a failed verification or a plain
// verify.
func TestLeaveOnlyWhenProven(t *testing.T) {
	b, _ := boards.Get("nucleo-f401re")
	img, _ := flash.NewImage("t", flash.Segment{Addr: 0x08000000, Data: bytes.Repeat([]byte{0x3c}, 10000)})
	ctx := context.Background()

	tg, dev, err := dfutest.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flash.Program(ctx, tg, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}
	if left, at := dev.Left(); !left || at != 0x08000000 {
		t.Fatalf("after a proven write: left=%v at %#x", left, at)
	}

	tg, dev, _ = dfutest.Open(b)
	dev.Faults = dfutest.Faults{Rand: rand.New(rand.NewPCG(1, 1)), CorruptWrite: 1, Max: 1}
	if _, err := flash.Program(ctx, tg, img, nil); !errors.Is(err, flash.ErrVerify) {
		t.Fatalf("corrupted write: %v", err)
	}
	tg.Close()
	if left, _ := dev.Left(); left {
		t.Fatal("the device left its bootloader after a failed verification")
	}

	tg, dev, _ = dfutest.Open(b)
	flash.Verify(ctx, tg, img, nil)
	tg.Close()
	if left, _ := dev.Left(); left {
		t.Fatal("a verify started the program")
	}
}

// TestCheckBoard: the board's erase units (boards.Memory.Pages) match the
// model's sectors for every DfuSe board; a device with another layout is
// the wrong device.
func TestCheckBoard(t *testing.T) {
	all, err := boards.All()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range all {
		if !b.Supports("dfuse") {
			continue
		}
		n++
		if _, _, err := dfutest.Open(b); err != nil {
			t.Errorf("%s: %v", b.Name, err)
		}
	}
	if n == 0 {
		t.Fatal("no DfuSe board")
	}
	dev, err := dfutest.New(dfutest.Config{VID: 0x0483, PID: 0xdf11, Alts: []string{"@Internal Flash  /0x08000000/08*016Kg,06*064Kg"}})
	if err != nil {
		t.Fatal(err)
	}
	tg, _ := newTarget(t, dev)
	b, _ := boards.Get("nucleo-f401re")
	if err := tg.CheckBoard(b); !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("CheckBoard = %v, want ErrWrongDevice", err)
	} else {
		t.Log(err)
	}
}

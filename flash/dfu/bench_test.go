package dfu_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu/dfutest"
)

// BenchmarkWriteVerify256K writes and verifies a 256 KiB image on the
// NUCLEO-F401RE model with the STM32F401's datasheet erase and program
// times and a full-speed bus, and compares the time with the model's
// theoretical minimum: the six sectors' erase time, the program time of
// every word, the bus time of every byte down and up, and the control
// transfers the protocol cannot do without (DNLOAD + two GETSTATUS per
// command or block written, one UPLOAD per block read).
func BenchmarkWriteVerify256K(b *testing.B) {
	const size = 256 << 10
	data := randBytes(rand.New(rand.NewPCG(256, 1)), size)
	img, _ := flash.NewImage("256k", flash.Segment{Addr: 0x08000000, Data: data})
	tm := dfutest.F401
	var busy time.Duration
	for _, s := range f401Sectors[:6] { // 4×16K + 64K + 128K = 256K
		busy += tm.EraseTime(s.size)
	}
	busy += tm.ProgramTime(size)
	const xfer = 2048
	blocks := size / xfer
	transfers := 3*(6+1+blocks) + (3 + 1 + blocks) // erase, set address, write; set address, abort, upload
	min := busy + tm.USBByte*time.Duration(2*size) + tm.Request*time.Duration(transfers)
	run := func(clock *dfutest.VirtualClock) (time.Duration, dfutest.Stats) {
		dev, tg := f401(b)
		dev.SetTiming(tm)
		if clock != nil {
			dev.SetClock(clock)
			tg.SetClock(clock)
		}
		start := time.Now()
		res, err := flash.Program(context.Background(), tg, img, nil)
		el := time.Since(start)
		if err != nil || !res.Verified {
			b.Fatalf("%+v %v", res, err)
		}
		if clock != nil {
			el = clock.Elapsed()
		}
		return el, dev.Stats()
	}
	for i := 0; i < b.N; i++ {
		// On a virtual clock shared by host and model the time is exact:
		// the model's busy times plus the host's waits, no scheduler noise.
		virt, st := run(dfutest.NewVirtualClock())
		// On the wall clock it includes timer and scheduling delays of a
		// (possibly busy) machine.
		wall, _ := run(nil)
		ratio, wratio := float64(virt)/float64(min), float64(wall)/float64(min)
		b.Logf("kiln write+verify 256 KiB on the F401 model: %v (virtual clock), %v (wall clock); theoretical minimum %v (erase+program %v); ratio %.3fx virtual, %.3fx wall (target <= 1.15x); %d transfers (minimum %d), %d early polls",
			virt.Round(time.Millisecond), wall.Round(time.Millisecond), min.Round(time.Millisecond), busy.Round(time.Millisecond), ratio, wratio, st.Transfers, transfers, st.EarlyPolls)
		b.ReportMetric(ratio, "x-min")
		b.ReportMetric(wratio, "x-min-wall")
	}
}

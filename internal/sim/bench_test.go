package sim_test

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/internal/sim"
	"kiln.dev/kiln/internal/store"
)

// timer0Overflow is how much simulated time one TIMER0_OVF interrupt of
// the Arduino core stands for on a 16 MHz Uno: prescaler 64, 256 counts.
const timer0Overflow = 64 * 256 * time.Second / 16_000_000

// runAvr runs simavr's own run_avr on elf for wall and returns the
// simulated time it covered, counted in the Arduino core's timer 0
// overflows, which run_avr prints with -ti 16 ("IRQ16 raising").
func runAvr(b *testing.B, elf string, wall time.Duration) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), wall)
	defer cancel()
	cmd := exec.CommandContext(ctx, "simavr", "-m", "atmega328p", "-f", "16000000", "-ti", "16", elf)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "IRQ16 raising") {
			n++
		}
	}
	cmd.Wait()
	return time.Duration(n) * timer0Overflow
}

// cpu returns the CPU time this process and its waited-for children have
// used: on a shared machine wall-clock ratios measure the load as much as
// the simulator, CPU time does not.
func cpu(b *testing.B) time.Duration {
	var self, kids syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		b.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids); err != nil {
		b.Fatal(err)
	}
	var t time.Duration
	for _, tv := range []syscall.Timeval{self.Utime, self.Stime, kids.Utime, kids.Stime} {
		t += time.Duration(tv.Nano())
	}
	return t
}

// BenchmarkSimulatedPerWallSecond: simulated time per wall-clock second of
// kiln run (simavr harness, as fast as the host allows) for blink-uno and
// for a sketch that keeps the UART busy at 115200 baud, against simavr's
// own run_avr on the same ELF over the same wall time. Target: kiln >= 1.0
// (keeps up with a real 16 MHz Uno). It also reports simulated time per
// CPU second (kiln's process and harness; run_avr), which a busy shared
// machine distorts less.
func BenchmarkSimulatedPerWallSecond(b *testing.B) {
	if _, err := exec.LookPath("simavr"); err != nil {
		b.Skip("simavr is not installed")
	}
	st, err := store.Open("")
	if err != nil {
		b.Fatal(err)
	}
	uno, err := boards.Get("arduino-uno")
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, dir string }{
		{"blink-uno", "../../recipes/blink-uno"},
		{"uartflood-uno", "../../testdata/sketches/uartflood-uno"},
	} {
		b.Run(c.name, func(b *testing.B) {
			a, _, err := sim.FromRecipe(context.Background(), c.dir, st)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			var kiln, peer, kilnCPU, peerCPU float64
			for i := 0; i < b.N; i++ {
				c0 := cpu(b)
				res, err := sim.Run(context.Background(), sim.Options{Board: uno, Artifact: a, For: 10 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				c1 := cpu(b)
				kiln += res.Ratio()
				kilnCPU += res.Simulated.Seconds() / (c1 - c0).Seconds()
				wall := res.Wall
				peerSim := runAvr(b, a.Path, wall)
				c2 := cpu(b)
				peer += peerSim.Seconds() / wall.Seconds()
				peerCPU += peerSim.Seconds() / (c2 - c1).Seconds()
				b.Logf("%s: kiln run %v simulated in %v wall, %v CPU; run_avr %v simulated in %v wall, %v CPU",
					c.name, res.Simulated, wall.Round(time.Millisecond), (c1 - c0).Round(time.Millisecond),
					peerSim, wall.Round(time.Millisecond), (c2 - c1).Round(time.Millisecond))
			}
			n := float64(b.N)
			b.ReportMetric(kiln/n, "kiln-sim-s/wall-s")
			b.ReportMetric(peer/n, "run_avr-sim-s/wall-s")
			b.ReportMetric(kilnCPU/n, "kiln-sim-s/cpu-s")
			b.ReportMetric(peerCPU/n, "run_avr-sim-s/cpu-s")
			b.ReportMetric(kilnCPU/peerCPU, "kiln/run_avr-per-cpu")
		})
	}
}

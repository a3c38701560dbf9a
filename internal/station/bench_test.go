package station_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kiln.dev/kiln/internal/station"
)

// BenchmarkStationScaling provisions boards on 1, 2, 4 and 8 ports of
// emulated Unos paced at the board's 115200 baud (and the ATmega328P's page
// write time), swapping in a fresh board after every job, and reports
// boards per hour and the scaling ratio rate(N) / (N × rate(1)).
func BenchmarkStationScaling(b *testing.B) {
	const perPort = 4
	rates := map[int]float64{}
	for _, n := range []int{1, 2, 4, 8} {
		var total time.Duration
		var boards int
		for i := 0; i < b.N; i++ {
			d, k := runLine(b, n, perPort)
			total += d
			boards += k
		}
		rate := float64(boards) / total.Hours()
		rates[n] = rate
		b.ReportMetric(rate, fmt.Sprintf("boards/h@%d", n))
		fmt.Printf("station: %d port(s): %d boards in %v: %.0f boards/hour\n", n, boards, total.Round(time.Millisecond), rate)
	}
	for _, n := range []int{2, 4, 8} {
		ratio := rates[n] / (float64(n) * rates[1])
		b.ReportMetric(ratio, fmt.Sprintf("scaling@%d", n))
		fmt.Printf("station: scaling at %d ports: %.2f × %d × the single-port rate (target ≥ 0.90 at 8)\n", n, ratio, n)
	}
}

// runLine provisions perPort boards on each of n watched ports and returns
// the time from the first job's start to the last one's end.
func runLine(b *testing.B, n, perPort int) (time.Duration, int) {
	l := newLine(b, 4096)
	watch := filepath.Join(l.dir, "ports")
	os.Mkdir(watch, 0o755)
	cfg := l.config(b, "", "watch = "+quote(filepath.Join(watch, "p*")))
	events := make(chan station.Event, 4096)
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, OnEvent: func(e station.Event) { events <- e }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	paced := fastUno()
	paced.Pace = true
	boardsOn := map[string]*ptyBoard{}
	left := map[string]int{}
	for i := 0; i < n; i++ {
		p := filepath.Join(watch, fmt.Sprintf("p%d", i))
		boardsOn[p] = plugBoard(b, paced, p)
		left[p] = perPort - 1
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()
	var first, last time.Time
	verified := 0
	for done := 0; done < n*perPort; {
		var e station.Event
		select {
		case e = <-events:
		case <-ctx.Done():
			b.Fatalf("line of %d: %v", n, ctx.Err())
		}
		if e.State == station.StateRunning && first.IsZero() {
			first = e.Time
		}
		if !ended(e) {
			continue
		}
		done++
		last = e.Time
		if e.State != station.StateVerified {
			b.Fatalf("%s: %s: %s", e.Port, e.State, e.Error)
		}
		verified++
		boardsOn[e.Port].unplug()
		if left[e.Port] > 0 {
			left[e.Port]--
			boardsOn[e.Port] = plugBoard(b, paced, e.Port)
		}
	}
	cancel()
	if err := <-runErr; err != nil {
		b.Fatal(err)
	}
	return last.Sub(first), verified
}

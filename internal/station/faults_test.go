package station_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/station"
)

// TestThousandJobsWithFaults runs at least 1000 jobs on 8 watched ports.
// After every job the board on the port is swapped for a fresh one, as an
// operator would; a tenth of the boards corrupt a byte, a twentieth stop
// answering, a tenth refuse a command, a tenth are unplugged in the middle
// of their job and the rest drop, corrupt and delay bytes at random. Then:
// every verified board holds the firmware and the record the log gives
// its job (no cross-talk), verified serial numbers are unique and
// contiguous but for numbers released by the last jobs (the next ones
// handed out) and match the state file (none lost or doubled), every failed
// job has a log record with its cause, and the log verifies.
func TestThousandJobsWithFaults(t *testing.T) {
	const ports, want = 8, 1000
	l := newLine(t, 1024)
	l.timeout, l.tries = "100ms", 3
	watch := filepath.Join(l.dir, "ports")
	os.Mkdir(watch, 0o755)
	cfg := l.config(t, "", "watch = "+quote(filepath.Join(watch, "p*")))
	events := make(chan station.Event, 1<<16)
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, OnEvent: func(e station.Event) { events <- e }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	type plugged struct {
		b       *ptyBoard
		kind    string
		unplugs bool
	}
	n := 0
	// A fresh board is made before the old one goes (so the two never
	// share a pty number), then linked where the old one was.
	plugNew := func(port string, old *plugged) *plugged {
		n++
		cfg := fastUno()
		p := &plugged{kind: "random"}
		switch n % 20 {
		case 3, 13:
			cfg.Faults.CorruptRx, p.kind = 200+n%700, "corrupt"
		case 5:
			cfg.Faults.StopAfter, p.kind = 100+n%900, "stop"
		case 7, 17:
			p.unplugs, p.kind = true, "unplug"
		case 8, 18:
			cfg.Faults.Nack, p.kind = 2+n%20, "nack"
		default:
			cfg.Faults.Rate, cfg.Faults.Seed = 3e-5, int64(n)
		}
		p.b = plugBoard(t, cfg, "")
		if old != nil {
			old.b.unplug()
		}
		p.b.connect(t, port)
		return p
	}
	link := func(i int) string { return filepath.Join(watch, fmt.Sprintf("p%d", i)) }
	on := map[string]*plugged{}
	for i := 0; i < ports; i++ {
		on[link(i)] = plugNew(link(i), nil)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()

	type job struct {
		end station.Event
		on  *plugged
	}
	var jobs []job
	history := map[string][]string{}
	jobOf := map[int64]string{} // job → port, to catch a job moving ports
	for len(jobs) < want {
		var e station.Event
		select {
		case e = <-events:
		case <-ctx.Done():
			t.Fatalf("after %d jobs: %v; status %+v", len(jobs), ctx.Err(), s.Status())
		}
		if e.Job != 0 {
			if p, ok := jobOf[e.Job]; ok && p != e.Port {
				t.Fatalf("job %d on %s and %s", e.Job, p, e.Port)
			}
			jobOf[e.Job] = e.Port
		}
		p := on[e.Port]
		history[e.Port] = append(history[e.Port], fmt.Sprintf("job %d %s %s %s (board %s %s)", e.Job, e.State, e.Phase, e.Error, p.b.name, p.kind))
		switch {
		case e.State == station.StateRunning && e.Phase == "write" && e.Done > 0 && p.unplugs:
			p.b.unplug()
		case ended(e):
			jobs = append(jobs, job{end: e, on: p})
			on[e.Port] = plugNew(e.Port, p)
		}
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}

	recs := l.records(t) // checks the chain and the checkpoints
	bySeq := map[int64]auditlog.Entry{}
	for _, e := range recs {
		bySeq[e.Seq] = e
	}
	// Jobs in flight when the run stopped may have failed after later jobs
	// took higher numbers: their numbers are not lost but are the first
	// the pool hands out at the next start.
	verified, gaps := verifiedSerials(t, recs)
	next, err := station.OpenSerials(cfg.Serial, cfg.State, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gaps {
		if n, err := next.Reserve(); err != nil || n != g {
			t.Errorf("serial %s is neither verified nor handed out next (next: %s, %v)", g, n, err)
		}
	}
	if len(gaps) > ports {
		t.Errorf("%d gaps with %d ports", len(gaps), ports)
	}
	causes := map[string]int{}
	kinds := map[string]map[string]int{}
	for _, j := range jobs {
		e, ok := bySeq[j.end.Seq]
		if !ok {
			t.Fatalf("job %d (%s) has no log record", j.end.Job, j.end.State)
		}
		if e.Port != j.end.Port || e.Provision["job"] != fmt.Sprint(j.end.Job) {
			t.Errorf("job %d's record is another job's: %+v", j.end.Job, e)
		}
		if kinds[j.on.kind] == nil {
			kinds[j.on.kind] = map[string]int{}
		}
		kinds[j.on.kind][e.Result]++
		switch j.end.State {
		case station.StateVerified:
			r := deviceRecord(t, j.on.b, l.fw)
			if r.Serial != e.Provision["serial"] || pubOf(r) != e.Provision["public_key"] || r.Serial != j.end.Serial {
				t.Errorf("job %d: the board holds %s, the log says %s, the event %s", j.end.Job, r.Serial, e.Provision["serial"], j.end.Serial)
			}
		case station.StateFailed:
			if e.Result == "ok" || e.Detail == "" {
				t.Errorf("failed job %d recorded as %q with cause %q", j.end.Job, e.Result, e.Detail)
			}
			causes[e.Result]++
			// Unplugged is said of exactly the boards that were pulled.
			if (e.Result == station.ResultUnplugged) != j.on.unplugs {
				t.Errorf("job %d on a board with %s faults recorded as %s: %s", j.end.Job, j.on.kind, e.Result, e.Detail)
				h := history[e.Port]
				for i, line := range h {
					if strings.HasPrefix(line, fmt.Sprintf("job %d ", j.end.Job)) {
						for _, l := range h[max(0, i-12):min(len(h), i+3)] {
							t.Logf("  %s", l)
						}
						break
					}
				}
			}
		default:
			t.Errorf("job %d ended %s", j.end.Job, j.end.State)
		}
	}
	// Every record in the log is a job the harness saw end, or one that
	// ended after it stopped counting (recorded as aborted or finished).
	if len(recs) < len(jobs) {
		t.Errorf("%d records for %d jobs", len(recs), len(jobs))
	}
	committed, err := station.OpenSerials(cfg.Serial, cfg.State, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := committed.Committed()
	if len(got) != len(verified) {
		t.Errorf("state file commits %d serial numbers, the log verified %d", len(got), len(verified))
	}
	for _, sn := range got {
		if _, ok := verified[sn]; !ok {
			t.Errorf("state file commits %s, which no verified record holds", sn)
		}
	}
	if causes[station.ResultUnplugged] == 0 || causes["error"] == 0 {
		t.Errorf("fault mix did not show: %v", causes)
	}
	var ks []string
	for k := range kinds {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		t.Logf("boards with %-7s faults: %v", k, kinds[k])
	}
	st := s.Status()
	t.Logf("%d jobs: %d verified, %d failed (%v), yield %.2f", len(recs), len(verified), len(recs)-len(verified), causes, st.Yield)
	if len(verified) < want/2 {
		t.Errorf("only %d of %d jobs verified", len(verified), len(jobs))
	}
}

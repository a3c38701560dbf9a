package station_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/station"
	"kiln.dev/kiln/internal/station/dashboard"
)

// TestDashboardInBrowser loads the dashboard in headless Chromium, plugs
// a board in and watches the page's own SSE-driven table show its job
// running and then verified, then saves a screenshot.
func TestDashboardInBrowser(t *testing.T) {
	l := newLine(t, 6144)
	watch := filepath.Join(l.dir, "ports")
	os.Mkdir(watch, 0o755)
	cfg := l.config(t, "", "watch = "+quote(filepath.Join(watch, "uno-*")))
	s, err := station.New(cfg, station.Options{LogKey: l.logKey})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dashboard.Handler(s))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()

	b := startBrowser(t, ctx)
	if err := b.call("Page.navigate", map[string]any{"url": srv.URL + "/"}, nil); err != nil {
		t.Fatal(err)
	}
	poll := func(what, expr string, ok func(string) bool) string {
		t.Helper()
		for {
			v, err := b.eval(expr)
			if err == nil && ok(v) {
				return v
			}
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s: last %q, %v", what, v, err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	poll("the page to go live", `document.getElementById("conn") && document.getElementById("conn").textContent`, func(v string) bool { return v == "live" })

	// A paced board (115200 baud): its job takes about a second.
	slow := fastUno()
	slow.Pace = true
	port := filepath.Join(watch, "uno-1")
	plugBoard(t, slow, port)
	state := fmt.Sprintf(`(function(){const r=document.querySelector('tr[data-port=%q]');return r?r.dataset.state:"";})()`, port)
	var seen []string
	sawBar := false
	poll("running then verified", state, func(v string) bool {
		if v == station.StateRunning && !sawBar {
			bar, _ := b.eval(fmt.Sprintf(`(function(){const p=document.querySelector('tr[data-port=%q] td.c-progress progress');return p?p.value+"/"+p.max:"";})()`, port))
			sawBar = bar != "" && bar != "0/1"
		}
		if v != "" && (len(seen) == 0 || seen[len(seen)-1] != v) {
			seen = append(seen, v)
		}
		return v == station.StateVerified || v == station.StateFailed
	})
	if strings.Join(seen, ",") != "running,verified" && !(len(seen) == 3 && seen[0] == "idle" && seen[1] == "running" && seen[2] == "verified") {
		t.Fatalf("the page showed %v, want running then verified", seen)
	}
	// What the operator reads in the row.
	row := func(col string) string {
		v, err := b.eval(fmt.Sprintf(`document.querySelector('tr[data-port=%q] td.c-%s').textContent`, port, col))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := row("state"); got != "verified" {
		t.Errorf("state cell reads %q", got)
	}
	if got := row("serial"); got != "KLN-000001" {
		t.Errorf("serial cell reads %q", got)
	}
	if got := row("verified"); got != "1" {
		t.Errorf("ok cell reads %q", got)
	}
	if got := row("device"); !strings.Contains(got, "1e950f") {
		t.Errorf("device cell reads %q", got)
	}
	if !sawBar {
		t.Error("no progress bar moved while the job ran")
	}
	if v, _ := b.eval(`document.getElementById("verified").textContent`); v != "1" {
		t.Errorf("verified count on the page: %q", v)
	}
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if err := b.screenshot(shot); err != nil {
		t.Fatal(err)
	}
	png, _ := os.ReadFile(shot)
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 1000 {
		t.Fatalf("screenshot %s is not a PNG (%d bytes)", shot, len(png))
	}
	t.Logf("page showed %v; screenshot %s (%d bytes)", seen, shot, len(png))
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
}

// TestDashboardEndpoints checks the JSON status and the event stream
// without a browser.
func TestDashboardEndpoints(t *testing.T) {
	l := newLine(t, 512)
	b := plugBoard(t, fastUno(), "")
	cfg := l.config(t, "", "ports = "+quote(b.name))
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dashboard.Handler(s))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events content type %q", ct)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The stream ends up showing the verified job.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var st station.Status
		if err := json.Unmarshal([]byte(data), &st); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if st.Verified == 1 {
			break
		}
	}
	r, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var st station.Status
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Verified != 1 || len(st.Ports) != 1 || st.Ports[0].Serial != "KLN-000001" || st.LogOK == nil || !*st.LogOK {
		t.Errorf("status %+v", st)
	}
	page, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer page.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(page.Body)
	if !strings.Contains(buf.String(), "EventSource") || strings.Contains(buf.String(), "src=\"http") || strings.Contains(buf.String(), "href=\"http") {
		t.Errorf("page is not self-contained")
	}
}

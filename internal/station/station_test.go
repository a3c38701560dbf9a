package station_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/station"
	"kiln.dev/kiln/internal/trust"
)

const recordAddr, recordSize = 0x7D80, 128

// deviceRecord checks that a board's flash holds the firmware and a valid
// record, and returns the record.
func deviceRecord(t testing.TB, b *ptyBoard, fw []byte) *station.Record {
	t.Helper()
	mem := b.dev.AppFlash()
	if !bytes.Equal(mem[:len(fw)], fw) {
		t.Errorf("%s: flash does not hold the firmware", b.name)
	}
	r, err := station.DecodeRecord(mem[recordAddr : recordAddr+recordSize])
	if err != nil {
		t.Fatalf("%s: record: %v", b.name, err)
	}
	return r
}

func pubOf(r *station.Record) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(r.PublicKey)
}

// serialNumbers checks that the verified records' serial numbers are
// unique and exactly KLN-000001 … KLN-00000n.
func serialNumbers(t testing.TB, recs []auditlog.Entry) map[string]auditlog.Entry {
	t.Helper()
	by, gaps := verifiedSerials(t, recs)
	if len(gaps) > 0 {
		t.Errorf("serial numbers not contiguous: %v missing among %d", gaps, len(by))
	}
	return by
}

// verifiedSerials returns the verified records by serial number (failing
// on a duplicate) and the numbers missing below the highest.
func verifiedSerials(t testing.TB, recs []auditlog.Entry) (map[string]auditlog.Entry, []string) {
	t.Helper()
	by := map[string]auditlog.Entry{}
	top := 0
	for _, e := range recs {
		if e.Result != "ok" {
			continue
		}
		s := e.Provision["serial"]
		if _, dup := by[s]; dup {
			t.Errorf("serial %s verified twice", s)
		}
		by[s] = e
		n, err := strconv.Atoi(strings.TrimPrefix(s, "KLN-"))
		if err != nil {
			t.Fatalf("serial %q", s)
		}
		top = max(top, n)
	}
	var gaps []string
	for i := 1; i <= top; i++ {
		if _, ok := by[fmt.Sprintf("KLN-%06d", i)]; !ok {
			gaps = append(gaps, fmt.Sprintf("KLN-%06d", i))
		}
	}
	return by, gaps
}

func TestEightBoardsConcurrently(t *testing.T) {
	l := newLine(t, 2048)
	var bs []*ptyBoard
	var ports []string
	for i := 0; i < 8; i++ {
		b := plugBoard(t, fastUno(), "")
		bs = append(bs, b)
		ports = append(ports, b.name)
	}
	cfg := l.config(t, "", "ports = "+quote(ports...))
	var mu sync.Mutex
	running, maxRunning := 0, 0
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 8, OnEvent: func(e station.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e.State {
		case station.StateRunning:
			if e.Phase == "trust" {
				running++
				maxRunning = max(maxRunning, running)
			}
		case station.StateVerified, station.StateFailed, station.StateAborted:
			running--
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if st.Verified != 8 || st.Failed != 0 || st.LogOK == nil || !*st.LogOK {
		t.Fatalf("status: %+v", st)
	}
	if maxRunning < 2 {
		t.Errorf("jobs never overlapped (at most %d at once)", maxRunning)
	}
	recs := l.records(t)
	if len(recs) != 8 {
		t.Fatalf("%d provision records, want 8", len(recs))
	}
	bySerial := serialNumbers(t, recs)
	byPort := map[string]auditlog.Entry{}
	for _, e := range recs {
		byPort[e.Port] = e
		if e.ReadbackSHA256 != e.ArtifactSHA256 || e.Device == "" || e.Operator != "tester" {
			t.Errorf("record %+v: want read-back = artifact hash, a device identity, the operator", e)
		}
		if e.Provision["record_sha256"] != e.Provision["record_readback_sha256"] {
			t.Errorf("record %d: record read back differs", e.Seq)
		}
	}
	for _, b := range bs {
		r := deviceRecord(t, b, l.fw)
		e, ok := byPort[b.name]
		if !ok {
			t.Fatalf("no record for %s", b.name)
		}
		if e.Provision["serial"] != r.Serial || e.Provision["public_key"] != pubOf(r) {
			t.Errorf("%s holds %s %s; the log says %s %s", b.name, r.Serial, pubOf(r), e.Provision["serial"], e.Provision["public_key"])
		}
		if r.PrivateKey == nil || !bytes.Contains(b.dev.AppFlash(), r.PrivateKey.Seed()) {
			t.Errorf("%s: no private key on the device", b.name)
		}
		logData, _ := os.ReadFile(l.log)
		if bytes.Contains(logData, []byte(base64.StdEncoding.EncodeToString(r.PrivateKey.Seed()))) {
			t.Errorf("the private key of %s is in the log", r.Serial)
		}
		// The key on the device signs, and the logged public key checks it.
		sig := ed25519.Sign(r.PrivateKey, []byte("challenge"))
		pub, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(e.Provision["public_key"], "ed25519:"))
		if !ed25519.Verify(pub, []byte("challenge"), sig) {
			t.Errorf("%s: logged public key does not verify the device's signature", r.Serial)
		}
	}
	if len(bySerial) != 8 {
		t.Errorf("%d serial numbers", len(bySerial))
	}

	// A restart hands out KLN-000009 next, never one of the eight.
	ser, err := station.OpenSerials(cfg.Serial, cfg.State, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := ser.Reserve(); n != "KLN-000009" {
		t.Errorf("after a restart the next serial is %s, want KLN-000009", n)
	}
	// Even with the state file lost (a crash between the log record and
	// the state write, a wiped disk), the log's verified records keep
	// their numbers taken: a ninth board gets KLN-000009.
	if err := os.Remove(cfg.State); err != nil {
		t.Fatal(err)
	}
	ninth := plugBoard(t, fastUno(), "")
	cfg9 := l.config(t, "", "ports = "+quote(ninth.name))
	s9, err := station.New(cfg9, station.Options{LogKey: l.logKey, MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s9.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if r := deviceRecord(t, ninth, l.fw); r.Serial != "KLN-000009" {
		t.Errorf("after losing the state file the ninth board got %s", r.Serial)
	}
	serialNumbers(t, l.records(t))
}

// TestHotPlug plugs boards into a watched directory while the station
// runs, unplugs one in the middle of its job and plugs it back.
func TestHotPlug(t *testing.T) {
	l := newLine(t, 4096)
	watch := filepath.Join(l.dir, "ports")
	os.Mkdir(watch, 0o755)
	cfg := l.config(t, "", "watch = "+quote(filepath.Join(watch, "uno-*")))
	rec := newRecorder()
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, OnEvent: rec.add})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()
	wait := func(port string, cond func(station.Event) bool) station.Event {
		t.Helper()
		return rec.wait(ctx, t, port, cond)
	}
	link := func(i int) string { return filepath.Join(watch, fmt.Sprintf("uno-%d", i)) }

	// Two boards appear; both are provisioned.
	a := plugBoard(t, fastUno(), link(1))
	b := plugBoard(t, fastUno(), link(2))
	ea := wait(link(1), ended)
	eb := wait(link(2), ended)
	if ea.State != station.StateVerified || eb.State != station.StateVerified {
		t.Fatalf("first boards: %+v %+v", ea, eb)
	}
	// A third board, paced at 115200 baud so its job takes a while, is
	// unplugged while it is being written.
	slow := fastUno()
	slow.Pace = true
	c := plugBoard(t, slow, link(3))
	wait(link(3), func(e station.Event) bool { return e.Phase == "write" && e.Done > 0 })
	c.unplug()
	ec := wait(link(3), ended)
	if ec.State != station.StateFailed || !strings.Contains(ec.Error, "unplugged") {
		t.Fatalf("unplugged board: %+v", ec)
	}
	wait(link(3), func(e station.Event) bool { return e.State == station.StateAbsent })
	// Plugged back in (a fresh board on the same name): a fresh job.
	c2 := plugBoard(t, fastUno(), link(3))
	if e := wait(link(3), ended); e.State != station.StateVerified || e.Job == ec.Job {
		t.Fatalf("re-plugged board: %+v", e)
	}
	// Board 1 leaves; its port goes absent, the others stay.
	a.unplug()
	wait(link(1), func(e station.Event) bool { return e.State == station.StateAbsent })
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if st.Verified != 3 || st.Failed != 1 || st.LogOK == nil || !*st.LogOK {
		t.Errorf("status %+v", st)
	}
	for _, p := range st.Ports {
		if p.Port == link(1) && p.Present {
			t.Errorf("unplugged port still present: %+v", p)
		}
	}
	recs := l.records(t)
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4", len(recs))
	}
	serialNumbers(t, recs)
	var unplugged []auditlog.Entry
	for _, e := range recs {
		if e.Result == station.ResultUnplugged {
			unplugged = append(unplugged, e)
		}
	}
	if len(unplugged) != 1 || unplugged[0].Port != link(3) || unplugged[0].Provision["serial_released"] == "" {
		t.Errorf("unplug records: %+v", unplugged)
	}
	// The unplugged board's serial number went to the next verified board.
	got := map[string]string{}
	for _, bd := range []*ptyBoard{a, b, c2} {
		got[deviceRecord(t, bd, l.fw).Serial] = bd.name
	}
	if _, ok := got[unplugged[0].Provision["serial_released"]]; !ok {
		t.Errorf("released serial %s was not reused: %v", unplugged[0].Provision["serial_released"], got)
	}
}

// TestUntrustedRefusedBeforeIO: a policy that wants a signature refuses an
// unsigned artifact before any port is opened.
func TestUntrustedRefusedBeforeIO(t *testing.T) {
	l := newLine(t, 256)
	k, _ := trust.GenerateKey(nil)
	pol := fmt.Sprintf("[[key]]\nname = \"release\"\npublic_key = %q\n[default]\nrequire_signature = true\n", k.Public().String())
	os.WriteFile(filepath.Join(l.dir, "policy.toml"), []byte(pol), 0o644)
	b := plugBoard(t, fastUno(), "")
	cfg := l.config(t, `policy = "policy.toml"`, "ports = "+quote(b.name))
	_, err := station.New(cfg, station.Options{LogKey: l.logKey})
	if !errors.Is(err, trust.ErrUntrusted) {
		t.Fatalf("New = %v, want ErrUntrusted", err)
	}
	if n := b.dev.PagesWritten(); n != 0 {
		t.Errorf("%d pages written", n)
	}
	// Signed with the trusted key, the same line runs.
	f, _ := os.Open(l.artifact)
	sig, _, err := trust.SignArtifact(k, f, "blink.hex", "", time.Now())
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(trust.SigPath(l.artifact), sig.Encode(), 0o644)
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 1 || recs[0].Result != "ok" || recs[0].Provision["artifact_key_id"] == "" {
		t.Errorf("records %+v", recs)
	}
}

// TestInterruptAbortsInFlight: a job still running when the grace period
// ends is recorded as aborted and its serial number is not consumed.
func TestInterruptAbortsInFlight(t *testing.T) {
	l := newLine(t, 8192)
	slow := fastUno()
	slow.Pace = true
	b := plugBoard(t, slow, "")
	cfg := l.config(t, "", "ports = "+quote(b.name))
	cfg, _ = station.ParseConfig([]byte(strings.Replace(mustRead(t, cfg.Source), `grace = "5s"`, `grace = "50ms"`, 1)), cfg.Source)
	writing := make(chan struct{})
	var once sync.Once
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, OnEvent: func(e station.Event) {
		if e.Phase == "write" && e.Done > 0 {
			once.Do(func() { close(writing) })
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-writing
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 1 || recs[0].Result != station.ResultAborted {
		t.Fatalf("records %+v", recs)
	}
	ser, _ := station.OpenSerials(cfg.Serial, cfg.State, nil)
	if n, _ := ser.Reserve(); n != "KLN-000001" {
		t.Errorf("aborted job consumed a serial number: next is %s", n)
	}
}

func mustRead(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPolicyPerPort: a policy rule that wants signatures on some ports
// only. The unsigned artifact goes to the other ports; a board on a
// guarded port gets a job recorded "untrusted" and is never written.
func TestPolicyPerPort(t *testing.T) {
	l := newLine(t, 256)
	watch := filepath.Join(l.dir, "ports")
	os.Mkdir(watch, 0o755)
	k, _ := trust.GenerateKey(nil)
	pol := fmt.Sprintf("[[key]]\nname = \"release\"\npublic_key = %q\n[[rule]]\nports = [%q]\nrequire_signature = true\n",
		k.Public().String(), filepath.Join(watch, "secure-*"))
	os.WriteFile(filepath.Join(l.dir, "policy.toml"), []byte(pol), 0o644)
	cfg := l.config(t, `policy = "policy.toml"`, "watch = "+quote(filepath.Join(watch, "*")))
	open := plugBoard(t, fastUno(), filepath.Join(watch, "bench-1"))
	guarded := plugBoard(t, fastUno(), filepath.Join(watch, "secure-1"))
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	res := map[string]string{}
	for _, e := range l.records(t) {
		res[filepath.Base(e.Port)] = e.Result + ": " + e.Detail
	}
	if !strings.HasPrefix(res["bench-1"], "ok") || !strings.HasPrefix(res["secure-1"], "untrusted: trust:") {
		t.Errorf("results %v", res)
	}
	if guarded.dev.PagesWritten() != 0 || open.dev.PagesWritten() == 0 {
		t.Errorf("pages written: guarded %d, open %d", guarded.dev.PagesWritten(), open.dev.PagesWritten())
	}
}

// TestTamperedLogRefused: the station verifies its log before it starts
// and will not add to a log that was edited.
func TestTamperedLogRefused(t *testing.T) {
	l := newLine(t, 256)
	b := plugBoard(t, fastUno(), "")
	cfg := l.config(t, "", "ports = "+quote(b.name))
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	data := mustRead(t, l.log)
	edited := strings.Replace(data, `"serial":"KLN-000001"`, `"serial":"KLN-000002"`, 1)
	if edited == data {
		t.Fatal("no serial in the log to edit")
	}
	os.WriteFile(l.log, []byte(edited), 0o644)
	_, err = station.New(cfg, station.Options{LogKey: l.logKey})
	if !errors.Is(err, station.ErrLog) || !errors.Is(err, auditlog.ErrTampered) {
		t.Fatalf("New on an edited log = %v", err)
	}
}

// TestOneJobPerDevice: two names for one device (a by-id link and the
// node itself) give one job, not two fighting over the port.
func TestOneJobPerDevice(t *testing.T) {
	l := newLine(t, 256)
	b := plugBoard(t, fastUno(), filepath.Join(l.dir, "by-id-uno"))
	cfg := l.config(t, "", "ports = "+quote(b.name, b.link))
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, MaxJobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 1 || recs[0].Result != "ok" {
		t.Fatalf("records %+v", recs)
	}
}

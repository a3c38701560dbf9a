package cli

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/station"
	"kiln.dev/kiln/internal/trust"
)

// stationLine writes a signed artifact, a policy that requires its
// signature, a log key and STATION.toml for ports.
func stationLine(t *testing.T, fw []byte, ports []string, sign bool) (dir string, logKey *trust.SecretKey) {
	t.Helper()
	dir = t.TempDir()
	art := writeHex(t, dir, "fw.hex", 0, fw)
	rel, _ := trust.GenerateKey(nil)
	if sign {
		f, _ := os.Open(art)
		sig, _, err := trust.SignArtifact(rel, f, "fw.hex", "", time.Now())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(trust.SigPath(art), sig.Encode(), 0o644)
	}
	pol := fmt.Sprintf("[[key]]\nname = \"release\"\npublic_key = %q\n[[rule]]\nboards = [\"arduino-*\"]\nrequire_signature = true\n", rel.Public().String())
	os.WriteFile(filepath.Join(dir, "policy.toml"), []byte(pol), 0o644)
	logKey, _ = trust.GenerateKey(nil)
	os.WriteFile(filepath.Join(dir, "audit.key"), logKey.Encode(), 0o600)
	os.WriteFile(filepath.Join(dir, "audit.pub"), logKey.Public().Encode(), 0o644)
	q := make([]string, len(ports))
	for i, p := range ports {
		q[i] = fmt.Sprintf("%q", p)
	}
	src := fmt.Sprintf(`name = "line-a"
operator = "alice"
policy = "policy.toml"
log = "audit.jsonl"
log_key = "audit.key"
poll = "20ms"

[serial]
prefix = "UNO-"
start = 1
width = 4

[keys]
ed25519 = true

[[target]]
board = "arduino-uno"
artifact = "fw.hex"
ports = [%s]
`, strings.Join(q, ", "))
	os.WriteFile(filepath.Join(dir, "STATION.toml"), []byte(src), 0o644)
	return dir, logKey
}

// TestStationEightEmulatedBoards runs kiln station on 8 boards served by
// eight `kiln emulate arduino-uno --state FILE` processes: afterwards each
// state file (the emulated chip's flash) holds the firmware and its own
// record, the serial numbers are UNO-0001 … UNO-0008, and the log verifies.
func TestStationEightEmulatedBoards(t *testing.T) {
	t.Parallel()
	fw := randomBytes(8, 3000)
	var emus []*emulator
	var ports, states []string
	stateDir := t.TempDir()
	for i := 0; i < 8; i++ {
		st := filepath.Join(stateDir, fmt.Sprintf("uno%d.flash", i))
		e := startEmulate(t, "arduino-uno", st)
		emus = append(emus, e)
		ports = append(ports, e.port)
		states = append(states, st)
	}
	dir, _ := stationLine(t, fw, ports, true)
	r := runKiln(t, nil, "station", filepath.Join(dir, "STATION.toml"), "--jobs", "8")
	if r.code != 0 {
		t.Fatalf("kiln station: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "8 jobs: 8 verified, 0 failed, 0 aborted; yield 100.0%; audit log verified") {
		t.Errorf("summary:\n%s", r.stdout)
	}
	for _, e := range emus {
		e.stop(t) // saves the state file
	}
	f, err := os.Open(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	es, err := auditlog.Read(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	byPort := map[string]auditlog.Entry{}
	for _, e := range es {
		if e.Kind == auditlog.KindProvision {
			byPort[e.Port] = e
		}
	}
	serials := map[string]bool{}
	for i, st := range states {
		mem, err := os.ReadFile(st)
		if err != nil {
			t.Fatal(err)
		}
		if string(mem[:len(fw)]) != string(fw) {
			t.Errorf("%s: firmware not in flash", st)
		}
		rec, err := station.DecodeRecord(mem[0x7D80:0x7E00])
		if err != nil {
			t.Fatalf("%s: %v", st, err)
		}
		e := byPort[ports[i]]
		if e.Result != "ok" || e.Provision["serial"] != rec.Serial || e.Operator != "alice" ||
			e.Provision["public_key"] != "ed25519:"+base64.StdEncoding.EncodeToString(rec.PublicKey) ||
			e.ReadbackSHA256 != e.ArtifactSHA256 || !strings.Contains(e.Device, "1e950f") {
			t.Errorf("%s holds %s; its log record is %+v", ports[i], rec.Serial, e)
		}
		serials[rec.Serial] = true
	}
	for i := 1; i <= 8; i++ {
		if !serials[fmt.Sprintf("UNO-%04d", i)] {
			t.Errorf("UNO-%04d missing: %v", i, serials)
		}
	}
	v := runKiln(t, nil, "log", "verify", "--log", filepath.Join(dir, "audit.jsonl"), "--pub", filepath.Join(dir, "audit.pub"))
	if v.code != 0 {
		t.Errorf("kiln log verify: exit %d: %s%s", v.code, v.stdout, v.stderr)
	}
}

// TestStationRefusesUnsigned: the policy wants a signature, the artifact
// has none: exit 4 and the board is never opened.
func TestStationRefusesUnsigned(t *testing.T) {
	t.Parallel()
	st := filepath.Join(t.TempDir(), "uno.flash")
	e := startEmulate(t, "arduino-uno", st)
	before, _ := os.ReadFile(st)
	dir, _ := stationLine(t, randomBytes(9, 500), []string{e.port}, false)
	r := runKiln(t, nil, "station", filepath.Join(dir, "STATION.toml"), "--jobs", "1")
	if r.code != 4 || !strings.Contains(r.stderr, "untrusted") {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
	e.stop(t)
	after, _ := os.ReadFile(st)
	if string(before) != string(after) {
		t.Error("the emulated board's flash changed")
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.jsonl")); err == nil {
		t.Error("a refused station wrote an audit log")
	}
}

// TestStationInterruptAndDashboard runs kiln station with --http on a
// board paced at 115200 baud, reads the JSON status endpoint while the job
// runs, and interrupts it: with a long grace period the job in flight
// finishes and is logged verified; with none it is logged aborted and its
// serial number stays free.
func TestStationInterruptAndDashboard(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		grace, result string
	}{{"30s", "ok"}, {"1ms", station.ResultAborted}} {
		stateFile := filepath.Join(t.TempDir(), "uno.flash")
		emu := startEmulator(t, exec.Command(kilnBin, "emulate", "arduino-uno", "--pace", "--state", stateFile))
		dir, _ := stationLine(t, randomBytes(10, 12000), []string{emu.port}, true)
		toml := filepath.Join(dir, "STATION.toml")
		src, _ := os.ReadFile(toml)
		os.WriteFile(toml, []byte("grace = \""+tc.grace+"\"\n"+string(src)), 0o644)

		cmd := exec.Command(kilnBin, "station", toml, "--http", "127.0.0.1:0")
		stdout, _ := cmd.StdoutPipe()
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		addr := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if u, ok := strings.CutPrefix(sc.Text(), "dashboard: "); ok {
					addr <- u
				}
			}
		}()
		var out bytes.Buffer
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			once := false
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
				if !once && strings.Contains(sc.Text(), "job 1 started") {
					once = true
					close(started)
				}
			}
		}()
		var base string
		select {
		case base = <-addr:
		case <-time.After(30 * time.Second):
			t.Fatal("no dashboard address")
		}
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("no job started")
		}
		// The status endpoint shows the job running.
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get(base + "status")
			if err != nil {
				t.Fatal(err)
			}
			var st station.Status
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if len(st.Ports) == 1 && st.Ports[0].State == station.StateRunning && st.Ports[0].Phase == "write" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never showed the job writing: %+v", st)
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Signal(os.Interrupt)
		<-done
		if err := cmd.Wait(); err != nil {
			t.Fatalf("grace %s: kiln station: %v\n%s", tc.grace, err, out.String())
		}
		f, _ := os.Open(filepath.Join(dir, "audit.jsonl"))
		es, err := auditlog.Read(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var recs []auditlog.Entry
		for _, e := range es {
			if e.Kind == auditlog.KindProvision {
				recs = append(recs, e)
			}
		}
		if len(recs) != 1 || recs[0].Result != tc.result {
			t.Fatalf("grace %s: records %+v\n%s", tc.grace, recs, out.String())
		}
		if !strings.Contains(out.String(), "audit log verified") {
			t.Errorf("grace %s: summary:\n%s", tc.grace, out.String())
		}
		if tc.result == station.ResultAborted && recs[0].Provision["serial_released"] != "UNO-0001" {
			t.Errorf("aborted job: %+v", recs[0].Provision)
		}
		emu.stop(t)
	}
}

// TestStationHotPlugEmulators: kiln station watches a directory while
// `kiln emulate` processes come and go behind links in it; each board that
// appears is provisioned once, a board that goes is reported unplugged.
func TestStationHotPlugEmulators(t *testing.T) {
	t.Parallel()
	watch := t.TempDir()
	dir, _ := stationLine(t, randomBytes(11, 1500), []string{"/nonexistent/port"}, true)
	toml := filepath.Join(dir, "STATION.toml")
	src, _ := os.ReadFile(toml)
	os.WriteFile(toml, []byte(strings.Replace(string(src), `ports = ["/nonexistent/port"]`, fmt.Sprintf("watch = [%q]", filepath.Join(watch, "uno-*")), 1)), 0o644)

	cmd := exec.Command(kilnBin, "station", toml, "--jobs", "3")
	stdout, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	waitLine := func(sub string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("kiln station ended before %q:\n%s\n%s", sub, strings.Join(out, "\n"), errb.String())
				}
				out = append(out, l)
				if strings.Contains(l, sub) {
					return
				}
			case <-timeout:
				t.Fatalf("no %q in:\n%s", sub, strings.Join(out, "\n"))
			}
		}
	}
	plug := func(name string) (*emulator, string) {
		st := filepath.Join(t.TempDir(), name+".flash")
		e := startEmulate(t, "arduino-uno", st)
		link := filepath.Join(watch, name)
		if err := os.Symlink(e.port, link); err != nil {
			t.Fatal(err)
		}
		return e, st
	}
	a, _ := plug("uno-a")
	waitLine(filepath.Join(watch, "uno-a") + ": verified UNO-0001")
	b, _ := plug("uno-b")
	waitLine(filepath.Join(watch, "uno-b") + ": verified UNO-0002")
	a.stop(t) // the board goes: its pty disappears behind the link
	waitLine(filepath.Join(watch, "uno-a") + ": unplugged")
	os.Remove(filepath.Join(watch, "uno-a"))
	c, cst := plug("uno-a") // another board on the same name
	waitLine(filepath.Join(watch, "uno-a") + ": verified UNO-0003")
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kiln station: %v\n%s", err, errb.String())
	}
	b.stop(t)
	c.stop(t)
	mem, _ := os.ReadFile(cst)
	if r, err := station.DecodeRecord(mem[0x7D80:0x7E00]); err != nil || r.Serial != "UNO-0003" {
		t.Errorf("re-plugged board's record: %v %v", r, err)
	}
}

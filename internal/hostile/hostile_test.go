// Package hostile runs the attacks in testdata/hostile against the real
// kiln binary (see testdata/hostile/README.md for the case format) and
// checks each gets its refusal, that no host file was read or written, no
// secret reached an output and no watched (device) byte changed.
package hostile

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const casesDir = "../../testdata/hostile"

// kiln builds the kiln binary once for all cases.
// $KILN_HOSTILE_BIN runs the cases against another kiln (an older one,
// to see that they catch what they are meant to).
func kiln(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("KILN_HOSTILE_BIN"); b != "" {
		return b
	}
	bin := filepath.Join(t.TempDir(), "kiln")
	cmd := exec.Command("go", "build", "-o", bin, "kiln.dev/kiln/cmd/kiln")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// expectation is a case's expect file: the line kiln's first line of
// stderr must contain ("" with exit 0: success), and the exit code.
type expectation struct {
	line string
	exit int
}

func readExpect(dir string) (expectation, error) {
	data, err := os.ReadFile(filepath.Join(dir, "expect"))
	if err != nil {
		return expectation{}, err
	}
	e := expectation{exit: 1}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	e.line = strings.TrimSpace(lines[0])
	for _, l := range lines[1:] {
		if n, ok := strings.CutPrefix(strings.TrimSpace(l), "exit "); ok {
			if e.exit, err = strconv.Atoi(n); err != nil {
				return e, fmt.Errorf("expect: %q: %w", l, err)
			}
		}
	}
	if e.line == "ok" {
		e.line, e.exit = "", 0
	}
	return e, nil
}

// fileState is what the harness remembers of a host file.
type fileState struct {
	mode  fs.FileMode
	sum   string
	atime time.Time
}

func snapshot(t *testing.T, root string) map[string]fileState {
	t.Helper()
	m := map[string]fileState{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st := fileState{mode: fi.Mode()}
		if s, ok := fi.Sys().(*syscall.Stat_t); ok {
			st.atime = time.Unix(s.Atim.Sec, s.Atim.Nsec)
		}
		switch {
		case fi.Mode().IsRegular():
			// Read without touching atime where the kernel lets us.
			data, err := readNoAtime(p)
			if err != nil {
				return nil
			}
			sum := sha256.Sum256(data)
			st.sum = hex.EncodeToString(sum[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			st.sum, _ = os.Readlink(p)
		}
		m[p] = st
		return nil
	})
	return m
}

func readNoAtime(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOATIME, 0)
	if err != nil {
		f, err = os.Open(p)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(f)
	return b.Bytes(), err
}

// atimeWorks reports whether reading a file in dir updates its atime
// (not on a noatime mount), so "was it read" can be answered.
func atimeWorks(dir string) bool {
	p := filepath.Join(dir, ".atime-probe")
	os.WriteFile(p, []byte("x"), 0o600)
	defer os.Remove(p)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(p, old, time.Now())
	os.ReadFile(p)
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return false
	}
	return time.Unix(st.Atim.Sec, st.Atim.Nsec).After(old.Add(time.Minute))
}

// ageAtimes sets every regular file's atime an hour before its mtime, so
// relatime records the next read.
func ageAtimes(root string) {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				os.Chtimes(p, fi.ModTime().Add(-time.Hour), fi.ModTime())
			}
		}
		return nil
	})
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	cmd := exec.Command("cp", "-a", from+"/.", to)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", from, err, out)
	}
}

// findSecret returns the first regular file under root (not following
// symlinks) holding secret.
func findSecret(root string, secret []byte) string {
	var found string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" || !d.Type().IsRegular() {
			return nil
		}
		if data, err := readNoAtime(p); err == nil && bytes.Contains(data, secret) {
			found = p
		}
		return nil
	})
	return found
}

func TestHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kiln binary")
	}
	ents, err := os.ReadDir(casesDir)
	if err != nil {
		t.Fatal(err)
	}
	bin := kiln(t)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		t.Run(name, func(t *testing.T) {
			runCase(t, bin, filepath.Join(casesDir, name))
		})
	}
}

func runCase(t *testing.T, bin, caseDir string) {
	want, err := readExpect(caseDir)
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	work, home, out, store := filepath.Join(base, "work"), filepath.Join(base, "home"), filepath.Join(base, "out"), filepath.Join(base, "store")
	for _, d := range []string{work, home, filepath.Join(home, ".config", "kiln"), filepath.Join(home, ".ssh"), out, store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyTree(t, caseDir, work)
	// The host's secrets and files an attacker would overwrite.
	token := make([]byte, 16)
	rand.Read(token)
	secret := []byte("KILN-HOSTILE-SECRET-" + hex.EncodeToString(token))
	secretPath := filepath.Join(home, ".config", "kiln", "kiln.key")
	victim := filepath.Join(home, ".ssh", "authorized_keys")
	if err := os.WriteFile(secretPath, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("ssh-ed25519 AAAA... operator\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home, "KILN_STORE=" + store, "KILN_LOG=" + filepath.Join(base, "audit.jsonl"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"XDG_STATE_HOME=" + filepath.Join(home, ".local", "state"), "TMPDIR=" + os.TempDir(),
		"KILN_KEY=" + filepath.Join(base, "no-signing-key"),
		"WORK=" + work, "OUT=" + out, "STORE=" + store, "SECRET=" + secretPath, "VICTIM=" + victim, "KILN=" + bin,
	}
	if _, err := os.Stat(filepath.Join(work, "setup")); err == nil {
		cmd := exec.Command("sh", "-e", filepath.Join(work, "setup"))
		cmd.Dir, cmd.Env = work, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("setup: %v\n%s", err, out)
		}
	}
	var watched map[string]string
	if data, err := os.ReadFile(filepath.Join(work, "watch")); err == nil {
		watched = map[string]string{}
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				b, err := os.ReadFile(filepath.Join(work, l))
				if err != nil {
					t.Fatalf("watch %s: %v", l, err)
				}
				sum := sha256.Sum256(b)
				watched[l] = hex.EncodeToString(sum[:])
			}
		}
	}
	argsLine, err := os.ReadFile(filepath.Join(work, "args"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Fields(os.Expand(strings.TrimSpace(string(argsLine)), func(k string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, k+"="); ok {
				return v
			}
		}
		return "$" + k
	}))
	checkReads := atimeWorks(home)
	ageAtimes(home)
	before := snapshot(t, home)

	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = work, env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(&stderr).ReadString('\n')
	first = strings.TrimSpace(first)
	t.Logf("kiln %s: exit %d: %s", strings.Join(args, " "), code, first)
	if code != want.exit {
		t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, want.exit, stdout.String(), first+"\n"+stderr.String())
	}
	if want.line != "" && !strings.Contains(first, want.line) {
		t.Errorf("first line of stderr:\n  %s\nwant it to contain:\n  %s", first, want.line)
	}

	// No host file read or written.
	after := snapshot(t, home)
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			t.Errorf("host file %s removed", p)
		case a.sum != b.sum || a.mode != b.mode:
			t.Errorf("host file %s changed", p)
		case checkReads && b.mode.IsRegular() && !a.atime.Equal(b.atime):
			t.Errorf("host file %s was read (atime %s, was %s)", p, a.atime.Format(time.RFC3339Nano), b.atime.Format(time.RFC3339Nano))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok && !strings.HasPrefix(p, filepath.Join(home, ".cache")) {
			t.Errorf("host file %s created", p)
		}
	}
	// No secret in any output, the store, the log or kiln's output.
	for _, root := range []string{out, store, work, filepath.Join(base, "audit.jsonl")} {
		if p := findSecret(root, secret); p != "" {
			t.Errorf("the secret reached %s", p)
		}
	}
	if bytes.Contains(stdout.Bytes(), secret) || strings.Contains(first+stderr.String(), string(secret)) {
		t.Errorf("the secret reached kiln's output")
	}
	// No watched (device) byte changed.
	for l, sum := range watched {
		b, err := os.ReadFile(filepath.Join(work, l))
		got := sha256.Sum256(b)
		if err != nil || hex.EncodeToString(got[:]) != sum {
			t.Errorf("watched %s changed (%v)", l, err)
		}
	}
}

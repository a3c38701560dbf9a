package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/trust"
)

// writeLog makes a log of n records with a checkpoint every 3 and one on
// close, and returns its path.
func writeLog(t *testing.T, key *trust.SecretKey, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l, err := Open(p, key, Options{CheckpointEvery: 3, Host: "bench-1", Operator: "ada", Now: func() time.Time {
		clock = clock.Add(time.Second)
		return clock
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		kind := []string{KindFlash, KindVerify, KindAudit}[i%3]
		if _, err := l.Append(Entry{Kind: kind, Board: "arduino-uno", Port: "emu:arduino-uno", Device: "1e950f",
			Artifact: "firmware.hex", ArtifactSHA256: fmt.Sprintf("%064x", i), ReadbackSHA256: fmt.Sprintf("%064x", i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func lines(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(string(b), "\n")[:strings.Count(string(b), "\n")]
}

func TestIntactLogVerifies(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := writeLog(t, key, 7)
	rep, err := VerifyFile(p, []*trust.PublicKey{key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	// r r r c r r r c r c
	if rep.Records != 7 || rep.Checkpoints != 3 || rep.Unsealed != 0 || rep.HeadSeq != 10 || rep.KeyID != key.ID.String() {
		t.Fatalf("report %+v", rep)
	}
	// Reopening continues the chain.
	l, err := Open(p, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := l.Append(Entry{Kind: KindFlash, Result: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != 11 || e.Host == "" {
		t.Fatalf("appended %+v", e)
	}
	l.Close()
	if rep, err := VerifyFile(p, nil); err != nil || rep.Records != 8 || rep.Checkpoints != 4 {
		t.Fatalf("after reopen: %+v %v", rep, err)
	}
}

// TestTamperDetected edits, deletes, swaps, duplicates and forges every
// line of a log in turn, and cuts it short at every point: Verify must
// report each one.
func TestTamperDetected(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := writeLog(t, key, 7)
	orig := lines(t, p)
	head, err := os.ReadFile(HeadPath(p))
	if err != nil {
		t.Fatal(err)
	}
	keys := []*trust.PublicKey{key.Public()}
	check := func(t *testing.T, ls []string, opts VerifyOptions) {
		t.Helper()
		_, err := Verify(strings.NewReader(strings.Join(ls, "")), opts)
		if !errors.Is(err, ErrTampered) {
			t.Fatalf("not detected: %v", err)
		}
	}
	with := func(ls []string, i int, s string) []string {
		out := append([]string(nil), ls...)
		out[i] = s
		return out
	}
	editField := func(line string, f func(*Entry)) string {
		var e Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		f(&e)
		return string(encode(&e)) + "\n"
	}
	// rechain recomputes every prev from line i on, as a forger without
	// the key would.
	rechain := func(ls []string, from int) []string {
		out := append([]string(nil), ls...)
		for j := from + 1; j < len(out); j++ {
			out[j] = editField(out[j], func(e *Entry) { e.Prev = lineHash([]byte(strings.TrimSuffix(out[j-1], "\n"))) })
		}
		return out
	}
	for i := range orig {
		i := i
		t.Run(fmt.Sprintf("line%d", i+1), func(t *testing.T) {
			t.Parallel()
			opts := VerifyOptions{Keys: keys, Head: head}
			t.Run("edit result", func(t *testing.T) {
				check(t, with(orig, i, editField(orig[i], func(e *Entry) { e.Result = "forged"; e.Detail = "x" })), opts)
			})
			t.Run("edit time", func(t *testing.T) {
				check(t, with(orig, i, editField(orig[i], func(e *Entry) { e.Time = e.Time.Add(-time.Hour) })), opts)
			})
			t.Run("flip one byte", func(t *testing.T) {
				b := []byte(orig[i])
				k := bytes.IndexByte(b, ':') + 2 // inside the first value
				b[k] ^= 0x01
				check(t, with(orig, i, string(b)), opts)
			})
			t.Run("reformat", func(t *testing.T) {
				check(t, with(orig, i, strings.Replace(orig[i], `,"prev"`, `, "prev"`, 1)), opts)
			})
			t.Run("edit and rechain", func(t *testing.T) {
				check(t, rechain(with(orig, i, editField(orig[i], func(e *Entry) { e.Device = "1e9587" })), i), opts)
			})
			t.Run("delete", func(t *testing.T) {
				check(t, append(append([]string(nil), orig[:i]...), orig[i+1:]...), opts)
			})
			t.Run("delete and rechain", func(t *testing.T) {
				ls := append(append([]string(nil), orig[:i]...), orig[i+1:]...)
				for j := i; j < len(ls); j++ {
					ls[j] = editField(ls[j], func(e *Entry) { e.Seq-- })
				}
				check(t, rechain(ls, max(i-1, 0)), opts)
			})
			t.Run("duplicate", func(t *testing.T) {
				ls := append(append(append([]string(nil), orig[:i+1]...), orig[i]), orig[i+1:]...)
				check(t, ls, opts)
			})
			if i+1 < len(orig) {
				t.Run("swap with next", func(t *testing.T) {
					ls := append([]string(nil), orig...)
					ls[i], ls[i+1] = ls[i+1], ls[i]
					check(t, ls, opts)
				})
			}
			t.Run("truncate before", func(t *testing.T) {
				check(t, orig[:i], opts)
			})
			t.Run("cut mid-line", func(t *testing.T) {
				check(t, append(append([]string(nil), orig[:i]...), orig[i][:len(orig[i])/2]), opts)
			})
		})
	}
	t.Run("all re-signed by another key", func(t *testing.T) {
		forger, _ := trust.GenerateKey(nil)
		ls := append([]string(nil), orig...)
		ls[0] = editField(ls[0], func(e *Entry) { e.Result = "forged" })
		for j := range ls {
			if j > 0 {
				ls[j] = editField(ls[j], func(e *Entry) { e.Prev = lineHash([]byte(strings.TrimSuffix(ls[j-1], "\n"))) })
			}
			ls[j] = editField(ls[j], func(e *Entry) {
				if e.Kind == KindCheckpoint {
					e.PublicKey = forger.Public().String()
					e.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(forger.Key, checkpointMessage(*e)))
				}
			})
		}
		newHead := []byte(ls[len(ls)-1])
		// With the real key pinned, the forgery fails.
		check(t, ls, VerifyOptions{Keys: keys, Head: newHead})
		// With the original head, too.
		check(t, ls, VerifyOptions{Head: head})
		// Without either there is nothing to compare with: say so.
		if _, err := Verify(strings.NewReader(strings.Join(ls, "")), VerifyOptions{Head: newHead}); err != nil {
			t.Fatalf("a consistent forgery with no pinned key or head is indistinguishable; got %v", err)
		}
	})
	t.Run("head from another log", func(t *testing.T) {
		other := writeLog(t, key, 2)
		h2, _ := os.ReadFile(HeadPath(other))
		check(t, orig, VerifyOptions{Keys: keys, Head: h2})
	})
}

func TestConcurrentAppends(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				l, err := Open(p, key, Options{})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := l.Append(Entry{Kind: KindFlash, Result: "ok"}); err != nil {
					t.Error(err)
				}
				if err := l.Close(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	rep, err := VerifyFile(p, []*trust.PublicKey{key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 20 || rep.Checkpoints != 20 {
		t.Fatalf("report %+v", rep)
	}
}

func TestUnsealedAfterCrash(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(p, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(Entry{Kind: KindFlash, Result: "ok"})
	l.f.Close() // a crash: no Close, no checkpoint
	rep, err := VerifyFile(p, nil)
	if err != nil || rep.Unsealed != 1 || rep.Checkpoints != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	l, err = Open(p, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // seals the orphan
	if rep, err := VerifyFile(p, nil); err != nil || rep.Unsealed != 0 || rep.Checkpoints != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// FuzzVerify: Verify never panics, and whatever it accepts is a chain it
// could have written (every accepted line re-encodes to itself).
func FuzzVerify(f *testing.F) {
	key, _ := trust.GenerateKey(nil)
	dir := f.TempDir()
	p := filepath.Join(dir, "audit.jsonl")
	l, _ := Open(p, key, Options{CheckpointEvery: 2})
	for i := 0; i < 3; i++ {
		l.Append(Entry{Kind: KindFlash, Result: "ok", Device: "1e950f"})
	}
	l.Close()
	good, _ := os.ReadFile(p)
	f.Add(good)
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":1,"prev":"` + zeroHash + `","time":"2026-01-01T00:00:00Z","kind":"flash"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Verify(bytes.NewReader(data), VerifyOptions{})
		if err != nil {
			return
		}
		es, rerr := Read(bytes.NewReader(data))
		if rerr != nil || len(es) != rep.Records+rep.Checkpoints {
			t.Fatalf("accepted %d+%d entries, Read found %d (%v)", rep.Records, rep.Checkpoints, len(es), rerr)
		}
	})
}

// A log cut in the middle of its last line is not silently extended.
func TestOpenRefusesCutLog(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := writeLog(t, key, 2)
	data, _ := os.ReadFile(p)
	os.WriteFile(p, data[:len(data)-10], 0o644)
	if _, err := Open(p, key, Options{}); !errors.Is(err, ErrTampered) {
		t.Fatalf("got %v, want ErrTampered", err)
	}
}

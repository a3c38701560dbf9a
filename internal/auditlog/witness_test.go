package auditlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/trust"
)

// What a witness adds: a log cut back to an earlier checkpoint with the
// head file copied back verifies without one (nothing in the log or beside
// it says it was longer), and so does a log rewritten and re-signed by
// whoever holds the key; with a witness exported before, both are
// reported.
func TestWitness(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	p := writeLog(t, key, 4) // records 1-3, checkpoint 4, record 5, checkpoint 6
	l, err := Open(p, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	witness, err := l.Head() // checkpoint 7
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := l.Append(Entry{Kind: KindFlash, Board: "arduino-uno", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil { // checkpoint 10
		t.Fatal(err)
	}
	verify := func(path string, head []byte, witnesses ...[]byte) error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = Verify(f, VerifyOptions{Keys: []*trust.PublicKey{key.Public()}, Head: head, Witnesses: witnesses})
		return err
	}
	head, _ := os.ReadFile(HeadPath(p))
	if err := verify(p, head, witness); err != nil {
		t.Fatalf("intact log with its witness: %v", err)
	}

	all := lines(t, p)
	cut := func(n int) (string, []byte) {
		q := filepath.Join(t.TempDir(), "audit.jsonl")
		os.WriteFile(q, []byte(strings.Join(all[:n], "")), 0o644)
		return q, []byte(all[n-1]) // the last line left is a checkpoint: it becomes the head
	}
	// Cut back past the witness (to checkpoint 6), head copied back.
	q, h := cut(6)
	if err := verify(q, h); err != nil {
		t.Fatalf("without a witness a cut back to a checkpoint is not detectable, yet verify said: %v", err)
	}
	if err := verify(q, h, witness); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "witness 1 checkpoint (seq 7) is missing") {
		t.Errorf("cut past the witness: %v", err)
	}
	// Cut back to a checkpoint after the witness: the witness still holds.
	q, h = cut(7)
	if err := verify(q, h, witness); err != nil {
		t.Errorf("cut to the witness itself: %v", err)
	}

	// Rewritten from the start (record 2 says "mismatch" no more), every
	// checkpoint re-signed with the key: the chain and signatures verify.
	r := filepath.Join(t.TempDir(), "audit.jsonl")
	rl, err := Open(r, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		switch i {
		case 3, 5, 6, 9:
			err = rl.Checkpoint()
		default:
			_, err = rl.Append(Entry{Kind: KindFlash, Board: "arduino-uno", Result: fmt.Sprint("ok ", i)})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	rl.Close()
	rh, _ := os.ReadFile(HeadPath(r))
	if err := verify(r, rh); err != nil {
		t.Fatalf("a rewrite re-signed with the key verifies without a witness, yet: %v", err)
	}
	if err := verify(r, rh, witness); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "differs from the witness 1 checkpoint") {
		t.Errorf("rewrite: %v", err)
	}
	// A witness signed by another key is not trusted.
	other, _ := trust.GenerateKey(nil)
	ol, _ := Open(filepath.Join(t.TempDir(), "x.jsonl"), other, Options{})
	forged, _ := ol.Head()
	ol.Close()
	if err := verify(p, head, forged); !errors.Is(err, ErrTampered) {
		t.Errorf("witness from another key: %v", err)
	}
}

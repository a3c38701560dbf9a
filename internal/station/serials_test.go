package station_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"kiln.dev/kiln/internal/station"
)

func TestSerialsReserveCommitRelease(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	cfg := station.SerialConfig{Prefix: "A-", Start: 100, Width: 5}
	s, err := station.OpenSerials(cfg, state, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Reserve()
	b, _ := s.Reserve()
	c, _ := s.Reserve()
	if a != "A-00100" || b != "A-00101" || c != "A-00102" {
		t.Fatalf("reserved %s %s %s", a, b, c)
	}
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	s.Release(a) // a failed device: its number goes back first
	if n, _ := s.Reserve(); n != a {
		t.Errorf("after a release, Reserve = %s, want %s", n, a)
	}
	if err := s.Commit(b); err == nil {
		t.Error("committed a number twice")
	}
	// A restart: committed numbers stay taken, reservations in flight are
	// free again, and numbers the log shows verified are taken too.
	s2, err := station.OpenSerials(cfg, state, []string{"A-00103", "B-7"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := 0; i < 3; i++ {
		n, _ := s2.Reserve()
		got = append(got, n)
	}
	if got[0] != "A-00100" || got[1] != "A-00102" || got[2] != "A-00104" {
		t.Errorf("after a restart: %v", got)
	}
}

func TestSerialsCSV(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "serials.csv")
	os.WriteFile(csv, []byte("serial,batch\nSN-X,1\nSN-Y,1\n# a comment\nSN-Z,2\n"), 0o644)
	cfg := station.SerialConfig{CSV: csv}
	s, err := station.OpenSerials(cfg, filepath.Join(dir, "state.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SN-X", "SN-Y", "SN-Z"} {
		n, err := s.Reserve()
		if err != nil || n != want {
			t.Fatalf("Reserve = %s, %v; want %s", n, err, want)
		}
		if err := s.Commit(n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reserve(); !errors.Is(err, station.ErrNoSerials) {
		t.Errorf("exhausted pool: %v", err)
	}
	os.WriteFile(csv, []byte("SN-1\nSN-1\n"), 0o644)
	if _, err := station.OpenSerials(cfg, filepath.Join(dir, "other.json"), nil); err == nil {
		t.Error("a CSV with a duplicate serial number was accepted")
	}
}

// TestSerialsConcurrent: many jobs reserving, committing and releasing at
// once never share a number, and the committed ones are contiguous.
func TestSerialsConcurrent(t *testing.T) {
	s, err := station.OpenSerials(station.SerialConfig{Prefix: "C", Width: 4}, filepath.Join(t.TempDir(), "s.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	held := map[string]bool{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				n, err := s.Reserve()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if held[n] {
					t.Errorf("%s handed out twice", n)
				}
				held[n] = true
				mu.Unlock()
				if (i+w)%3 == 0 {
					mu.Lock()
					delete(held, n)
					mu.Unlock()
					s.Release(n)
					continue
				}
				if err := s.Commit(n); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	// Committed numbers are unique; any number below the highest that is
	// not committed was released last and is the next handed out.
	c := map[string]bool{}
	top := -1
	for _, n := range s.Committed() {
		c[n] = true
		v, _ := strconv.Atoi(n[1:])
		top = max(top, v)
	}
	for i := 0; i <= top; i++ {
		if n := "C" + pad4(i); !c[n] {
			if got, _ := s.Reserve(); got != n {
				t.Errorf("%s is neither committed nor next (next: %s)", n, got)
			}
		}
	}
}

func pad4(i int) string {
	s := "0000" + itoa(i)
	return s[len(s)-4:]
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

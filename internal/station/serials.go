package station

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// ErrNoSerials means every serial number has been handed out.
var ErrNoSerials = errors.New("no serial numbers left")

// Serials hands out serial numbers: Reserve one for a job, then Commit it
// once the device is verified, or Release it for the next job. A committed
// number is never handed out again, across restarts too: commits are
// written to the state file before Commit returns. Released numbers go back
// to the pool first, so verified devices carry contiguous numbers.
type Serials struct {
	cfg   SerialConfig
	list  []string // CSV numbers, in file order
	state string

	mu        sync.Mutex
	committed map[int]bool
	reserved  map[int]bool
	low       int // no free index below it
}

type serialState struct {
	Committed []string `json:"committed"`
	// Reserved were in flight when the state was written; they are free
	// again after a restart unless the audit log shows them verified.
	Reserved []string `json:"reserved,omitempty"`
}

// OpenSerials loads the pool cfg describes and the state file; used are
// numbers known to be consumed elsewhere (verified records in the audit
// log), committed too.
func OpenSerials(cfg SerialConfig, statePath string, used []string) (*Serials, error) {
	s := &Serials{cfg: cfg, state: statePath, committed: map[int]bool{}, reserved: map[int]bool{}}
	if cfg.CSV != "" {
		list, err := readSerialCSV(cfg.CSV)
		if err != nil {
			return nil, err
		}
		s.list = list
	}
	var st serialState
	data, err := os.ReadFile(statePath)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("station: state %s: %w", statePath, err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("station: state: %w", err)
	}
	for _, n := range append(st.Committed, used...) {
		i, ok := s.index(n)
		if !ok {
			continue // from another pool (the log covers every station)
		}
		s.committed[i] = true
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	return s, nil
}

func readSerialCSV(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("station: serial numbers: %w", err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	r.Comment = '#'
	var list []string
	seen := map[string]int{}
	for line := 1; ; line++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("station: serial numbers: %w", err)
		}
		v := strings.TrimSpace(rec[0])
		if v == "" || (len(list) == 0 && strings.EqualFold(v, "serial")) {
			continue
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("station: %s: serial number %q twice (lines %d and %d)", path, v, prev, line)
		}
		seen[v] = line
		list = append(list, v)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("station: %s: no serial numbers: %w", path, ErrNoSerials)
	}
	return list, nil
}

// name is the serial number at index i of the pool.
func (s *Serials) name(i int) (string, bool) {
	if s.list != nil {
		if i >= len(s.list) {
			return "", false
		}
		return s.list[i], true
	}
	return fmt.Sprintf("%s%0*d", s.cfg.Prefix, s.cfg.Width, s.cfg.Start+i), true
}

// index is the inverse of name.
func (s *Serials) index(n string) (int, bool) {
	if s.list != nil {
		for i, v := range s.list {
			if v == n {
				return i, true
			}
		}
		return 0, false
	}
	digits, ok := strings.CutPrefix(n, s.cfg.Prefix)
	if !ok || digits == "" || len(digits) > 18 {
		return 0, false
	}
	v := 0
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if v < s.cfg.Start {
		return 0, false
	}
	if name, _ := s.name(v - s.cfg.Start); name != n {
		return 0, false // same number, other spelling: not from this pool
	}
	return v - s.cfg.Start, true
}

// Reserve hands out the lowest number neither committed nor reserved.
func (s *Serials) Reserve() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := s.low; ; i++ {
		if s.committed[i] || s.reserved[i] {
			continue
		}
		n, ok := s.name(i)
		if !ok {
			return "", fmt.Errorf("station: %w (%d in %s)", ErrNoSerials, len(s.list), s.cfg.CSV)
		}
		s.reserved[i] = true
		return n, nil
	}
}

// Commit marks a reserved number consumed by a verified device and writes
// the state file.
func (s *Serials) Commit(n string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index(n)
	if !ok || !s.reserved[i] {
		return fmt.Errorf("station: commit serial %s: not reserved", n)
	}
	delete(s.reserved, i)
	s.committed[i] = true
	s.advance()
	return s.save()
}

// Release returns a reserved number to the pool.
func (s *Serials) Release(n string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index(n); ok && s.reserved[i] {
		delete(s.reserved, i)
		if i < s.low {
			s.low = i
		}
	}
}

// Committed lists the consumed numbers in pool order.
func (s *Serials) Committed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, i := range sortedKeys(s.committed) {
		n, _ := s.name(i)
		out = append(out, n)
	}
	return out
}

func (s *Serials) advance() {
	for s.committed[s.low] {
		s.low++
	}
}

func sortedKeys(m map[int]bool) []int {
	ks := make([]int, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	return ks
}

// save writes the state file atomically (caller holds mu).
func (s *Serials) save() error {
	s.advance()
	var st serialState
	for _, i := range sortedKeys(s.committed) {
		n, _ := s.name(i)
		st.Committed = append(st.Committed, n)
	}
	for _, i := range sortedKeys(s.reserved) {
		n, _ := s.name(i)
		st.Reserved = append(st.Reserved, n)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.state, append(data, '\n')); err != nil {
		return fmt.Errorf("station: state: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".station-state-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

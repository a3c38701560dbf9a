package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Retry policy for transient failures (ErrUnavailable): Attempts tries in
// all, waiting FirstBackoff, then twice as long each time.
var (
	Attempts     = 4
	FirstBackoff = 200 * time.Millisecond
)

// retry runs fn until it succeeds, fails with something other than
// ErrUnavailable, or Attempts are used up.
func retry(ctx context.Context, fn func() error) error {
	wait := FirstBackoff
	var err error
	for i := 0; i < Attempts; i++ {
		if err = fn(); err == nil || !errors.Is(err, ErrUnavailable) {
			return err
		}
		if i == Attempts-1 {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after %v)", ctx.Err(), err)
		case <-t.C:
		}
		wait *= 2
	}
	return err
}

// Progress is told how a transfer goes: the phase ("push", "pull"), and
// bytes done of total (total grows as work is found).
type Progress func(phase string, done, total int64)

// meter counts bytes for a Progress from several goroutines.
type meter struct {
	phase       string
	done, total atomic.Int64
	fn          Progress
	mu          sync.Mutex
}

func newMeter(phase string, fn Progress) *meter { return &meter{phase: phase, fn: fn} }

func (m *meter) add(done, total int64) {
	if m == nil {
		return
	}
	d, t := m.done.Add(done), m.total.Add(total)
	if m.fn != nil {
		m.mu.Lock()
		m.fn(m.phase, d, t)
		m.mu.Unlock()
	}
}

// countingReader reports bytes read to a meter.
type countingReader struct {
	r io.Reader
	m *meter
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.m.add(int64(n), 0)
	}
	return n, err
}

// resumingReader reads an object and, when the connection fails part way,
// asks for the rest (a ranged GET from the offset reached) under the retry
// policy, so a dropped download resumes instead of starting again.
type resumingReader struct {
	ctx     context.Context
	b       Bucket
	name    string
	off     int64
	rc      io.ReadCloser
	retries int
}

func openResuming(ctx context.Context, b Bucket, name string) (*resumingReader, error) {
	r := &resumingReader{ctx: ctx, b: b, name: name}
	err := retry(ctx, func() error {
		rc, err := b.Get(ctx, name, 0)
		r.rc = rc
		return err
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		n, err := r.rc.Read(p)
		r.off += int64(n)
		if err == nil || err == io.EOF || n > 0 {
			return n, err
		}
		if r.ctx.Err() != nil || r.retries >= Attempts-1 {
			return 0, netErr("cache: get "+r.name, err)
		}
		if !errors.Is(netErr("", err), ErrUnavailable) {
			return 0, err
		}
		r.rc.Close()
		r.retries++
		rerr := retry(r.ctx, func() error {
			rc, err := r.b.Get(r.ctx, r.name, r.off)
			r.rc = rc
			return err
		})
		if rerr != nil {
			r.rc = io.NopCloser(errReader{rerr})
			return 0, rerr
		}
	}
}

func (r *resumingReader) Close() error { return r.rc.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// parallel runs fn for each of n items on jobs goroutines and returns the
// errors by item.
func parallel(ctx context.Context, n, jobs int, fn func(ctx context.Context, i int) error) []error {
	errs := make([]error, n)
	if jobs < 1 {
		jobs = 1
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(jobs, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs[i] = fn(ctx, i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return errs
}

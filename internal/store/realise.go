package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Substituter gets the entry of a derivation built elsewhere (a binary
// cache) instead of building it. Realise consults a store's Substituters in
// order before it builds. What a substituter writes is checked exactly like
// a local build (the request's Check against its own manifest) before it
// enters the store; a substituter that also checks signatures does so
// itself.
type Substituter interface {
	// Substitute writes the outputs of (hash, name) into dir, an empty
	// directory, and reports whether it had them. (false, nil) means "not
	// here": the next substituter, or the build, is tried. An error is
	// reported and the build is tried.
	Substitute(ctx context.Context, hash, name, dir string) (bool, error)
}

// How says how Realise produced an entry.
type How string

const (
	Hit         How = "hit"         // the store held it and it verified
	Substituted How = "substituted" // a Substituter had it
	Built       How = "built"       // the request's Build made it
)

// Request is one derivation to realise.
type Request struct {
	// Hash and Name key the entry (Store.Path).
	Hash, Name string
	// Build writes the outputs into dir, an empty directory inside the
	// store. Required.
	Build func(ctx context.Context, dir string) error
	// Check verifies an entry's outputs against the builder's own record
	// of them (e.g. the hashes in its manifest.json, the derivation it
	// names): on a hit, after a substitution and after a build, and always
	// after the store has re-hashed every file against the entry's seal
	// (entry, the verified ManifestName), so Check can compare hashes
	// without reading the files again. Required.
	Check func(dir string, entry *Manifest) error
	// Substitute, if set, is asked after the store's Substituters: it puts
	// the entry into the store itself (a binary cache, internal/cache) and
	// returns its path, or false. What it added is checked like a hit; an
	// entry that fails is removed and the derivation built.
	Substitute func(ctx context.Context, key, name string) (string, bool)
	// NoSubstitute builds without asking the store's Substituters.
	NoSubstitute bool
	// Log, if set, gets one line per step.
	Log func(format string, a ...any)
}

// Realised is the entry Realise found or made.
type Realised struct {
	Path string
	How  How
}

// ErrNoSuchOutput is wrapped by CheckOutputs when an output the builder's
// manifest names is not in the entry.
var ErrNoSuchOutput = errors.New("output missing from store entry")

// Realise is the one path by which a derivation reaches the store: look it
// up and verify it (the entry's seal, then the request's Check), else ask
// each Substituter, else build; what a substituter or build wrote is
// checked before it is added. A hit that fails verification is an error
// wrapping ErrTampered, never silently rebuilt over: the entry must be
// removed (kiln store gc) by someone who has looked at it.
func (s *Store) Realise(ctx context.Context, req Request) (*Realised, error) {
	if req.Build == nil || req.Check == nil {
		return nil, fmt.Errorf("store: realise %s: request needs Build and Check", req.Name)
	}
	logf := req.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if p, ok := s.Lookup(req.Hash, req.Name); ok {
		if err := s.verifyWith(p, req.Check); err != nil {
			return nil, err
		}
		logf("store hit %s", p)
		return &Realised{Path: p, How: Hit}, nil
	}
	if !req.NoSubstitute {
		for _, sub := range s.Substituters {
			got := false
			p, err := s.Add(req.Hash, req.Name, func(dir string) error {
				ok, err := sub.Substitute(ctx, req.Hash, req.Name, dir)
				if err != nil || !ok {
					return errNotSubstituted{err}
				}
				got = true
				return nil
			})
			var ns errNotSubstituted
			if errors.As(err, &ns) {
				if ns.err != nil {
					logf("substituter: %v", ns.err)
				}
				continue
			}
			if err != nil {
				return nil, err
			}
			if err := s.verifyWith(p, req.Check); err != nil {
				// Add checked nothing about the content: a substitute that
				// fails the builder's check is removed, and the build runs.
				if rmErr := s.remove(p); rmErr != nil {
					return nil, fmt.Errorf("store: substitute of %s failed its check (%v) and could not be removed: %w", req.Name, err, rmErr)
				}
				logf("substituter: %s refused: %v", req.Name, err)
				continue
			}
			if got {
				logf("substituted %s", p)
				return &Realised{Path: p, How: Substituted}, nil
			}
			return &Realised{Path: p, How: Hit}, nil // another process added it meanwhile
		}
	}
	if req.Substitute != nil && !req.NoSubstitute {
		if p, ok := req.Substitute(ctx, req.Hash, req.Name); ok {
			err := s.verifyWith(p, req.Check)
			if err == nil {
				logf("substituted %s", p)
				return &Realised{Path: p, How: Substituted}, nil
			}
			if rmErr := s.remove(p); rmErr != nil {
				return nil, fmt.Errorf("store: substitute of %s failed its check (%v) and could not be removed: %w", req.Name, err, rmErr)
			}
			logf("substitute %s refused: %v", req.Name, err)
		}
	}
	p, err := s.Add(req.Hash, req.Name, func(dir string) error { return req.Build(ctx, dir) })
	if err != nil {
		return nil, err
	}
	if err := s.verifyWith(p, req.Check); err != nil {
		return nil, err
	}
	logf("built %s", p)
	return &Realised{Path: p, How: Built}, nil
}

type errNotSubstituted struct{ err error }

func (e errNotSubstituted) Error() string {
	if e.err == nil {
		return "not substituted"
	}
	return e.err.Error()
}

// verifyWith re-hashes the entry at p against its seal and then runs check.
func (s *Store) verifyWith(p string, check func(string, *Manifest) error) error {
	if err := s.Verify(p); err != nil {
		return err
	}
	m, err := ReadManifest(p)
	if err != nil {
		return err
	}
	if err := check(p, m); err != nil {
		if errors.Is(err, ErrTampered) {
			return err
		}
		return fmt.Errorf("store: %s: %w: %v", filepath.Base(p), ErrTampered, err)
	}
	return nil
}

// remove deletes an entry (renamed aside first, as GC does).
func (s *Store) remove(p string) error {
	doomed := filepath.Join(s.Root, tmpPrefix+fmt.Sprint(os.Getpid())+"-rm-"+filepath.Base(p))
	if err := os.Rename(p, doomed); err != nil {
		return err
	}
	return removeAll(doomed)
}

// CheckOutputs compares a builder's record of its outputs (file name →
// sha256) with the verified entry manifest m: every named output must be a
// regular file of the entry with that hash, and the entry may hold nothing
// else but the files named in extra (e.g. the builder's manifest itself).
// It is the usual body of a Request's Check.
func CheckOutputs(m *Manifest, outputs map[string]string, extra ...string) error {
	have := map[string]FileRecord{}
	for _, f := range m.Files {
		have[f.Path] = f
	}
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, ok := have[n]
		if !ok || f.Type != "file" {
			return fmt.Errorf("%w: %s", ErrNoSuchOutput, n)
		}
		if f.SHA256 != outputs[n] {
			return fmt.Errorf("%s: sha256 %s, its manifest says %s", n, short(f.SHA256), short(outputs[n]))
		}
		delete(have, n)
	}
	for _, n := range extra {
		delete(have, n)
	}
	if len(have) > 0 {
		var left []string
		for n := range have {
			left = append(left, n)
		}
		sort.Strings(left)
		return fmt.Errorf("files no manifest names: %s", strings.Join(left, ", "))
	}
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Package libindex reads an Arduino library index (library_index.json, the
// format of downloads.arduino.cc/libraries) and resolves libraries with
// their dependencies to exact releases, as arduino-cli's `lib install`
// does: newest first, backtracking when a dependency's constraint cannot
// be met.
package libindex

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Sentinel errors.
var (
	// ErrBadIndex: the index is not a library index.
	ErrBadIndex = errors.New("bad library index")
	// ErrNotFound: no release of a library (or of a version) is indexed.
	ErrNotFound = errors.New("library not in the index")
	// ErrUnresolvable: the dependencies cannot all be satisfied.
	ErrUnresolvable = errors.New("dependencies cannot be resolved")
)

// Release is one release of a library in the index.
type Release struct {
	Name             string       `json:"name"`
	Version          string       `json:"version"`
	Author           string       `json:"author,omitempty"`
	Maintainer       string       `json:"maintainer,omitempty"`
	Sentence         string       `json:"sentence,omitempty"`
	Architectures    []string     `json:"architectures,omitempty"`
	URL              string       `json:"url"`
	ArchiveFileName  string       `json:"archiveFileName"`
	Size             int64        `json:"size"`
	Checksum         string       `json:"checksum"`
	Dependencies     []Dependency `json:"dependencies,omitempty"`
	ProvidesIncludes []string     `json:"providesIncludes,omitempty"`
}

// Dependency is a library a release depends on, with an optional
// version constraint ("=1.2.0", ">=1.0.0", "^2.1.0", joined by && or ||).
type Dependency struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

// Index is a parsed library index.
type Index struct {
	Libraries []Release `json:"libraries"`
	byName    map[string][]*Release
}

// Parse reads library_index.json.
func Parse(data []byte) (*Index, error) {
	var ix Index
	if err := json.Unmarshal(data, &ix); err != nil {
		return nil, fmt.Errorf("libindex: %w: %v", ErrBadIndex, err)
	}
	ix.byName = map[string][]*Release{}
	for i := range ix.Libraries {
		r := &ix.Libraries[i]
		if r.Name == "" || r.Version == "" {
			return nil, fmt.Errorf("libindex: %w: release %d has no name or version", ErrBadIndex, i)
		}
		ix.byName[r.Name] = append(ix.byName[r.Name], r)
	}
	for _, rs := range ix.byName {
		sort.SliceStable(rs, func(i, j int) bool { return Compare(rs[i].Version, rs[j].Version) > 0 })
	}
	return &ix, nil
}

// SHA256 returns the release's SHA-256 from its checksum field.
func (r *Release) SHA256() (string, error) {
	algo, sum, ok := strings.Cut(r.Checksum, ":")
	if !ok || algo != "SHA-256" || !regexp.MustCompile(`^[0-9a-fA-F]{64}$`).MatchString(sum) {
		return "", fmt.Errorf("libindex: %s %s: %w: checksum %q is not SHA-256:<64 hex digits>", r.Name, r.Version, ErrBadIndex, r.Checksum)
	}
	return strings.ToLower(sum), nil
}

// Releases lists a library's releases, newest first.
func (ix *Index) Releases(name string) []*Release { return ix.byName[name] }

// Names lists the indexed library names, sorted.
func (ix *Index) Names() []string {
	var n []string
	for k := range ix.byName {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Providing lists the newest release of every library that declares
// header in providesIncludes, the best name match first (the header's base
// name equal to the library's, then the others by name).
func (ix *Index) Providing(header string) []*Release {
	var out []*Release
	for _, n := range ix.Names() {
		r := ix.byName[n][0]
		for _, h := range r.ProvidesIncludes {
			if h == header {
				out = append(out, r)
				break
			}
		}
	}
	base := strings.ToLower(strings.TrimSuffix(header, ".h"))
	sort.SliceStable(out, func(i, j int) bool {
		return simplify(out[i].Name) == base && simplify(out[j].Name) != base
	})
	return out
}

func simplify(s string) string {
	return strings.ToLower(strings.NewReplacer(" ", "_", "-", "_").Replace(s))
}

// Resolve picks a release for each requested library (name and optional
// constraint) and, transitively, for their dependencies. Releases are
// tried newest first; a choice that leaves a dependency unsatisfiable is
// undone. The result is sorted by name.
func (ix *Index) Resolve(reqs []Dependency) ([]*Release, error) {
	for _, r := range reqs {
		if len(ix.byName[r.Name]) == 0 {
			return nil, fmt.Errorf("libindex: %w: %q", ErrNotFound, r.Name)
		}
		if _, err := ParseConstraint(r.Version); err != nil {
			return nil, err
		}
	}
	chosen := map[string]*Release{}
	var why error
	budget := maxSteps
	if !ix.resolve(chosen, reqs, &why, &budget) {
		if why == nil {
			why = ErrUnresolvable
		}
		return nil, why
	}
	var out []*Release
	for _, r := range chosen {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// maxSteps bounds the backtracking search: an index whose releases'
// dependencies conflict at every depth would otherwise take exponential
// time (arduino-cli's resolver has the same shape and no bound).
const maxSteps = 100000

func (ix *Index) resolve(chosen map[string]*Release, queue []Dependency, why *error, budget *int) bool {
	if len(queue) == 0 {
		return true
	}
	if *budget--; *budget < 0 {
		*why = fmt.Errorf("libindex: %w: gave up after trying %d combinations of releases", ErrUnresolvable, maxSteps)
		return false
	}
	d := queue[0]
	c, err := ParseConstraint(d.Version)
	if err != nil {
		*why = err
		return false
	}
	if r, ok := chosen[d.Name]; ok {
		if c.Match(r.Version) {
			return ix.resolve(chosen, queue[1:], why, budget)
		}
		*why = fmt.Errorf("libindex: %w: %s %s is chosen but %s is required", ErrUnresolvable, r.Name, r.Version, d.Version)
		return false
	}
	rels := ix.byName[d.Name]
	if len(rels) == 0 {
		*why = fmt.Errorf("libindex: %w: dependency %q is not available", ErrNotFound, d.Name)
		return false
	}
	tried := false
next:
	for _, r := range rels {
		if !c.Match(r.Version) {
			continue
		}
		for _, dep := range r.Dependencies {
			if len(ix.byName[dep.Name]) == 0 {
				*why = fmt.Errorf("libindex: %w: %s %s depends on %q, which is not available", ErrNotFound, r.Name, r.Version, dep.Name)
				continue next
			}
		}
		tried = true
		chosen[d.Name] = r
		if ix.resolve(chosen, append(append([]Dependency(nil), queue[1:]...), r.Dependencies...), why, budget) {
			return true
		}
		delete(chosen, d.Name)
		if *budget < 0 {
			return false
		}
	}
	if !tried && *why == nil {
		*why = fmt.Errorf("libindex: %w: no release of %s matches %q", ErrNotFound, d.Name, d.Version)
	}
	return false
}

// Constraint is a parsed version constraint.
type Constraint struct{ alts [][]term }

type term struct{ op, ver string }

var termRE = regexp.MustCompile(`^(=|>=|<=|>|<|\^|!=)?\s*([0-9A-Za-z.+-]+)$`)

// ParseConstraint parses "", "1.2.3" (=), "=1.2.3", ">=1.0", "<2", "^1.2"
// and "!=1.0", joined with && and || (no parentheses).
func ParseConstraint(s string) (Constraint, error) {
	var c Constraint
	s = strings.TrimSpace(s)
	if s == "" {
		return c, nil
	}
	for _, alt := range strings.Split(s, "||") {
		var ts []term
		for _, part := range strings.Split(alt, "&&") {
			m := termRE.FindStringSubmatch(strings.TrimSpace(part))
			if m == nil {
				return c, fmt.Errorf("libindex: version constraint %q: cannot parse %q", s, strings.TrimSpace(part))
			}
			op := m[1]
			if op == "" {
				op = "="
			}
			ts = append(ts, term{op, m[2]})
		}
		c.alts = append(c.alts, ts)
	}
	return c, nil
}

// Match reports whether version satisfies the constraint.
func (c Constraint) Match(v string) bool {
	if len(c.alts) == 0 {
		return true
	}
	for _, alt := range c.alts {
		ok := true
		for _, t := range alt {
			cmp := Compare(v, t.ver)
			switch t.op {
			case "=":
				ok = ok && cmp == 0
			case "!=":
				ok = ok && cmp != 0
			case ">":
				ok = ok && cmp > 0
			case ">=":
				ok = ok && cmp >= 0
			case "<":
				ok = ok && cmp < 0
			case "<=":
				ok = ok && cmp <= 0
			case "^":
				a, b := parts(v), parts(t.ver)
				same := a[0] == b[0] && (b[0] != 0 || a[1] == b[1])
				ok = ok && cmp >= 0 && same
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// parts returns major, minor, patch of a relaxed semantic version ("1.64"
// is 1.64.0); pre-release and build suffixes are ignored here.
func parts(v string) [3]int {
	v, _, _ = strings.Cut(v, "+")
	v, _, _ = strings.Cut(v, "-")
	var p [3]int
	for i, s := range strings.SplitN(v, ".", 3) {
		p[i], _ = strconv.Atoi(s)
	}
	return p
}

// Compare compares two relaxed semantic versions: -1, 0 or 1. A
// pre-release sorts before its release.
func Compare(a, b string) int {
	pa, pb := parts(a), parts(b)
	for i := range pa {
		if pa[i] != pb[i] {
			if pa[i] < pb[i] {
				return -1
			}
			return 1
		}
	}
	preA, preB := pre(a), pre(b)
	switch {
	case preA == preB:
		return 0
	case preA == "":
		return 1
	case preB == "":
		return -1
	case preA < preB:
		return -1
	}
	return 1
}

func pre(v string) string {
	v, _, _ = strings.Cut(v, "+")
	_, p, _ := strings.Cut(v, "-")
	return p
}

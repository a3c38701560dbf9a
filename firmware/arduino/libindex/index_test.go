package libindex

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func index(t testing.TB, rels ...Release) *Index {
	t.Helper()
	data, err := json.Marshal(Index{Libraries: rels})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestResolveBacktracks(t *testing.T) {
	// The newest A needs C 2.x, which does not exist; the older A needs
	// C 1.x: the resolver must fall back to A 1.0.0.
	ix := index(t,
		Release{Name: "A", Version: "2.0.0", Dependencies: []Dependency{{Name: "C", Version: "^2.0.0"}}},
		Release{Name: "A", Version: "1.0.0", Dependencies: []Dependency{{Name: "C", Version: "^1.0.0"}}},
		Release{Name: "C", Version: "1.4.0"},
		Release{Name: "C", Version: "1.10.0"},
	)
	got, err := ix.Resolve([]Dependency{{Name: "A"}})
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, r := range got {
		s = append(s, r.Name+"@"+r.Version)
	}
	if strings.Join(s, " ") != "A@1.0.0 C@1.10.0" {
		t.Fatalf("resolved %v, want A@1.0.0 C@1.10.0", s)
	}
}

func TestResolveRefuses(t *testing.T) {
	ix := index(t,
		Release{Name: "A", Version: "1.0.0", Dependencies: []Dependency{{Name: "B", Version: ">=3"}}},
		Release{Name: "B", Version: "2.0.0"},
	)
	if _, err := ix.Resolve([]Dependency{{Name: "A"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unsatisfiable dependency: got %v, want ErrNotFound", err)
	}
	if _, err := ix.Resolve([]Dependency{{Name: "Z"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing library: got %v, want ErrNotFound", err)
	}
	if _, err := ix.Resolve([]Dependency{{Name: "A", Version: ">>1"}}); err == nil {
		t.Fatal("a malformed constraint was accepted")
	}
}

// TestResolveGivesUp: a hostile index whose every release of L_i needs a
// release of L_{i+1} that only the last library refuses makes a plain
// backtracking search try 8^N combinations; the resolver stops at its
// budget with ErrUnresolvable instead of running for hours.
func TestResolveGivesUp(t *testing.T) {
	var rels []Release
	const depth, versions = 12, 8
	for i := 0; i < depth; i++ {
		for v := 0; v < versions; v++ {
			r := Release{Name: fmt.Sprintf("L%d", i), Version: fmt.Sprintf("1.0.%d", v)}
			next := Dependency{Name: fmt.Sprintf("L%d", i+1)}
			if i == depth-1 {
				next = Dependency{Name: "L0", Version: "=9.9.9"}
			}
			r.Dependencies = []Dependency{next}
			rels = append(rels, r)
		}
	}
	ix := index(t, rels...)
	_, err := ix.Resolve([]Dependency{{Name: "L0"}})
	if !errors.Is(err, ErrUnresolvable) || !strings.Contains(err.Error(), "gave up") {
		t.Fatalf("got %v, want the search to give up with ErrUnresolvable", err)
	}
}

// FuzzParse: any index either fails with ErrBadIndex or parses into one
// whose lookups never panic, and whatever Resolve returns satisfies every
// constraint it was given and every dependency of every chosen release.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"libraries":[{"name":"A","version":"1.0.0","url":"https://x/a.zip","archiveFileName":"a.zip","size":1,"checksum":"SHA-256:` + strings.Repeat("ab", 32) + `","dependencies":[{"name":"B","version":"^1.2"}],"providesIncludes":["A.h"]},{"name":"B","version":"1.3.0-rc1"},{"name":"B","version":"1.2.9"}]}`))
	f.Add([]byte(`{"libraries":[{"name":"A","version":"2","dependencies":[{"name":"A","version":"<2 || >=3 && !=4"}]}]}`))
	f.Add([]byte(`{"libraries":[{"name":"","version":"1"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrBadIndex) {
				t.Fatalf("Parse error %v is not ErrBadIndex", err)
			}
			return
		}
		for _, n := range ix.Names() {
			rels := ix.Releases(n)
			for i, r := range rels {
				_, _ = r.SHA256()
				if i > 0 && Compare(rels[i-1].Version, r.Version) < 0 {
					t.Fatalf("%s: releases not newest first: %s before %s", n, rels[i-1].Version, r.Version)
				}
				for _, h := range r.ProvidesIncludes {
					ix.Providing(h)
				}
			}
			got, err := ix.Resolve([]Dependency{{Name: n, Version: ">=0"}})
			if err != nil {
				continue
			}
			byName := map[string]*Release{}
			for _, r := range got {
				if byName[r.Name] != nil {
					t.Fatalf("%s chosen twice", r.Name)
				}
				byName[r.Name] = r
			}
			if byName[n] == nil {
				t.Fatalf("resolving %s did not choose it", n)
			}
			for _, r := range got {
				for _, d := range r.Dependencies {
					c, err := ParseConstraint(d.Version)
					if err != nil {
						t.Fatalf("%s %s: accepted with unparsable constraint %q", r.Name, r.Version, d.Version)
					}
					if dep := byName[d.Name]; dep == nil || !c.Match(dep.Version) {
						t.Fatalf("%s %s needs %s %q: not met by the resolution", r.Name, r.Version, d.Name, d.Version)
					}
				}
			}
		}
	})
}

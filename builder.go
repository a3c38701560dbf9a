// Package kiln knows kiln's own code: the builder digest, a hash of the
// sources of every package that shapes a build's outputs, which is part of
// every derivation (so a change to the flags kiln adds, the link order, the
// ELF→HEX/BIN/DFU conversion, the image writers or the unpacking of inputs
// builds anew instead of reusing an old store entry), and the module
// version and VCS revision kiln was built from, for provenance.
package kiln

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
)

// The packages whose code shapes outputs. A package added to that set is
// added here (TestBuilderSourcesCoverOutputPackages lists what must be).
//
//go:embed firmware/*.go firmware/arduino/*.go image/*.go image/recipebuild/*.go image/rootfs/*.go flash/*.go internal/fetch/*.go recipes/*.go
var builderSources embed.FS

var digest = sync.OnceValue(func() string {
	var names []string
	fs.WalkDir(builderSources, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, "_test.go") {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		data, err := builderSources.ReadFile(n)
		if err != nil {
			panic(err) // embedded: cannot happen
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(h, "%s %x\n", n, sum)
	}
	return hex.EncodeToString(h.Sum(nil))
})

// BuilderDigest is the hex sha256 over the path and sha256 of every
// non-test Go source file of the output-shaping packages, as compiled into
// this binary.
func BuilderDigest() string { return digest() }

// BuilderSources lists the files BuilderDigest covers.
func BuilderSources() []string {
	var names []string
	fs.WalkDir(builderSources, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, "_test.go") {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	return names
}

// Build is what the binary says about itself.
type Build struct {
	Module   string `json:"module"`             // kiln.dev/kiln
	Version  string `json:"version"`            // module version, "(devel)" for a checkout build
	Revision string `json:"revision,omitempty"` // VCS revision
	Modified bool   `json:"modified,omitempty"` // the work tree had changes
	Digest   string `json:"builder_digest"`
}

// Info returns the running binary's module version, VCS revision and
// builder digest.
func Info() Build {
	b := Build{Module: "kiln.dev/kiln", Version: "(devel)", Digest: BuilderDigest()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path != "" {
			b.Module = bi.Main.Path
		}
		if bi.Main.Version != "" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	return b
}

// String is the version line: "(devel) rev 1234abcd+dirty builder 5678...".
func (b Build) String() string {
	s := b.Version
	if b.Revision != "" {
		r := b.Revision
		if len(r) > 12 {
			r = r[:12]
		}
		s += " rev " + r
		if b.Modified {
			s += "+dirty"
		}
	}
	return s + " builder " + b.Digest[:16]
}

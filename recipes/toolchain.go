package recipes

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

//go:embed toolchains/*.toml
var toolchainFiles embed.FS

// Toolchain is a pinned toolchain closure: the compiler packages and the
// shared libraries they load, each .deb pinned by sha256, unpacked together
// into one tree.
type Toolchain struct {
	Name   string `toml:"name" json:"name"`
	Arch   string `toml:"arch" json:"arch"`     // the boards.Board arch it builds for
	Prefix string `toml:"prefix" json:"prefix"` // tool prefix: "avr-", "arm-none-eabi-"
	// Version is the compiler version, for messages and manifests.
	Version string `toml:"version" json:"version"`
	// Packages are the .debs of the closure, unpacked in order into one tree.
	Packages []Input `toml:"packages" json:"packages"`
	// Links are symlinks created in the merged tree (path → target), the
	// ones the packages' maintainer scripts or other packages would make.
	Links map[string]string `toml:"links" json:"links,omitempty"`
	// LibDirs are the tree's directories for LD_LIBRARY_PATH.
	LibDirs []string `toml:"lib_dirs" json:"lib_dirs,omitempty"`
	// Binds are absolute paths the packages' own files hard-code (absolute
	// path → tree-relative path). newlib's nano.specs adds "-isystem
	// /usr/include/newlib/nano": a sandbox binds the tree's copy there, so
	// the host's files never leak into a build.
	Binds map[string]string `toml:"binds" json:"binds,omitempty"`
	// BinDir holds the tools ("usr/bin").
	BinDir string `toml:"bin_dir" json:"bin_dir"`
	// Host names what still comes from the host (its C library): the
	// impurities a build manifest lists.
	Host []string `toml:"host" json:"host,omitempty"`
}

// ToolchainNames lists the shipped toolchain closures, sorted.
func ToolchainNames() []string {
	ents, _ := fs.Glob(toolchainFiles, "toolchains/*.toml")
	var names []string
	for _, e := range ents {
		names = append(names, strings.TrimSuffix(path.Base(e), ".toml"))
	}
	sort.Strings(names)
	return names
}

// LoadToolchain loads the embedded recipes/toolchains/<name>.toml. An
// unknown name wraps ErrUnknownToolchain.
func LoadToolchain(name string) (*Toolchain, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownToolchain, name, strings.Join(ToolchainNames(), ", "))
	}
	file := "toolchains/" + name + ".toml"
	data, err := toolchainFiles.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownToolchain, name, strings.Join(ToolchainNames(), ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("recipes: toolchain %s: %w", name, err)
	}
	tc, err := ParseToolchain("recipes/"+file, data)
	if err != nil {
		return nil, err
	}
	if tc.Name != name {
		return nil, fmt.Errorf("recipes/%s: %w: name is %q", file, ErrInvalid, tc.Name)
	}
	return tc, nil
}

// ParseToolchain parses and validates a toolchain file; file names it in errors.
func ParseToolchain(file string, data []byte) (*Toolchain, error) {
	var tc Toolchain
	src := string(data)
	md, err := toml.Decode(src, &tc)
	if err != nil {
		return nil, tomlError(file, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, fmt.Errorf("%s:%s: %w: unknown key %q", file, keyPos(src, k[len(k)-1]), ErrInvalid, k.String())
	}
	if err := tc.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &tc, nil
}

// Validate checks that the closure is complete and consistent.
func (tc *Toolchain) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: toolchain %s: %s", ErrInvalid, tc.Name, fmt.Sprintf(format, a...))
	}
	if !nameRE.MatchString(tc.Name) {
		return bad("bad name")
	}
	if tc.Arch == "" || tc.Prefix == "" || tc.BinDir == "" {
		return bad("needs arch, prefix and bin_dir")
	}
	if len(tc.Packages) == 0 {
		return bad("no packages")
	}
	seen := map[string]bool{}
	for _, p := range tc.Packages {
		if err := p.validate(); err != nil {
			return bad("package %v", err)
		}
		if seen[p.Name] {
			return bad("package %s is listed twice", p.Name)
		}
		seen[p.Name] = true
		if p.Subdir != "" || p.File != "" {
			return bad("package %s: subdir and file do not apply to toolchain packages", p.Name)
		}
	}
	rel := append([]string{tc.BinDir}, tc.LibDirs...)
	for l, target := range tc.Links {
		rel = append(rel, l)
		if target == "" || path.IsAbs(target) {
			return bad("link %s: target %q must be relative", l, target)
		}
		if t := path.Join(path.Dir(l), target); t == ".." || strings.HasPrefix(t, "../") {
			return bad("link %s -> %s leaves the tree", l, target)
		}
	}
	for abs, p := range tc.Binds {
		if !path.IsAbs(abs) || path.Clean(abs) != abs || abs == "/" {
			return bad("bind %q: want a clean absolute path", abs)
		}
		rel = append(rel, p)
	}
	for _, p := range rel {
		if err := checkRelGlob(p); err != nil || strings.ContainsAny(p, "*?[") {
			return bad("path %q must be a plain relative path inside the tree", p)
		}
	}
	return nil
}

// Tool returns the tree-relative path of a tool: Tool("gcc") is
// "usr/bin/avr-gcc".
func (tc *Toolchain) Tool(name string) string {
	return path.Join(tc.BinDir, tc.Prefix+name)
}

// ToolchainPin is the part of a toolchain that identifies it in a
// derivation: everything but where its packages are fetched from.
type ToolchainPin struct {
	Name     string            `json:"name"`
	Arch     string            `json:"arch"`
	Prefix   string            `json:"prefix"`
	Version  string            `json:"version,omitempty"`
	Packages []PackagePin      `json:"packages"`
	Links    map[string]string `json:"links,omitempty"`
	LibDirs  []string          `json:"lib_dirs,omitempty"`
	Binds    map[string]string `json:"binds,omitempty"`
	BinDir   string            `json:"bin_dir"`
	Host     []string          `json:"host,omitempty"`
}

// PackagePin names one package of a closure by hash.
type PackagePin struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// Pin returns the toolchain without its sources.
func (tc *Toolchain) Pin() ToolchainPin {
	p := ToolchainPin{Name: tc.Name, Arch: tc.Arch, Prefix: tc.Prefix, Version: tc.Version,
		Links: tc.Links, LibDirs: tc.LibDirs, Binds: tc.Binds, BinDir: tc.BinDir, Host: tc.Host}
	for _, pk := range tc.Packages {
		p.Packages = append(p.Packages, PackagePin{Name: pk.Name, SHA256: pk.SHA256})
	}
	return p
}

// Hash is the hex sha256 of the closure's canonical JSON (Pin): it names
// the merged toolchain tree in the store. Mirrors do not change it.
func (tc *Toolchain) Hash() string {
	return hashJSON(struct {
		Format    int          `json:"format"`
		Toolchain ToolchainPin `json:"toolchain"`
	}{FormatVersion, tc.Pin()})
}

// hashJSON is the one canonical hashing path: encoding/json of structs
// (fields in declaration order, map keys sorted), then sha256.
func hashJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("recipes: canonical json: " + err.Error()) // only plain data is hashed
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

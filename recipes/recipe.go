package recipes

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"kiln.dev/kiln/boards"
)

// Sentinel errors. Each is returned wrapped, with the file and the detail.
var (
	// ErrHashMismatch: fetched content does not have the sha256 its recipe pins.
	// Returned (wrapped) by the fetcher; the message names expected and actual.
	ErrHashMismatch = errors.New("sha256 mismatch")
	// ErrUnknownToolchain: a recipe names a toolchain closure kiln does not ship.
	ErrUnknownToolchain = errors.New("unknown toolchain")
	// ErrNoMatch: a source glob of a recipe matches no file.
	ErrNoMatch = errors.New("matches no file")
	// ErrInvalid: a recipe or toolchain file is malformed or inconsistent
	// (bad TOML, unknown key, missing field, bad value).
	ErrInvalid = errors.New("invalid recipe")
)

// FileName is the name of the recipe file inside a recipe directory.
const FileName = "recipe.toml"

// Kinds of recipes.
const (
	KindFirmware = "firmware"
	KindImage    = "image"
)

// Recipe is one parsed and validated recipe.toml.
type Recipe struct {
	// Dir is the absolute directory holding recipe.toml. It is not part of
	// the derivation: the same recipe in two checkouts has one hash.
	Dir string `json:"-"`
	// File is the recipe file's path as the user named it, for messages.
	File string `json:"-"`

	Name      string `json:"name"`
	Version   string `json:"version"`
	Board     string `json:"board"`
	Toolchain string `json:"toolchain,omitempty"`
	Kind      string `json:"kind"`
	// Sources are globs relative to Dir of the files compiled into the program.
	Sources []string `json:"sources"`
	// Files are globs relative to Dir of files the build reads but does not
	// compile (headers, linker scripts, data). They are hashed like sources.
	Files  []string `json:"files,omitempty"`
	Inputs []Input  `json:"inputs,omitempty"`
	Build  Build    `json:"build"`

	// Tests are the recipe's [[test]] sections (kiln test). They say how
	// to check a build, not what to build: not part of the derivation.
	Tests []Test `json:"-"`

	// Ext holds the top-level tables a non-firmware kind reads (for
	// example an image recipe's tables), undecoded. See RegisterKind.
	Ext map[string]toml.Primitive `json:"-"`
	// KindData is what the kind's handler decoded from Ext; it is part of
	// the derivation.
	KindData any `json:"-"`
}

// Input is a fixed-output input: identified by its sha256, fetched from any
// of its sources.
type Input struct {
	Name string `toml:"name" json:"name"`
	// Sources are tried in order: "deb:NAME=VERSION", "https://…",
	// "file:PATH" (relative to the recipe directory, or absolute). They are
	// not part of the derivation: only the hash is.
	Sources []string `toml:"sources" json:"sources,omitempty"`
	SHA256  string   `toml:"sha256" json:"sha256"`
	// Subdir is an optional path inside the unpacked input used as its root.
	Subdir string `toml:"subdir,omitempty" json:"subdir,omitempty"`
	// File is the name a non-archive input is stored under inside its store
	// entry; default: the input's name.
	File string `toml:"file,omitempty" json:"file,omitempty"`
	// Executable stores a non-archive input with execute permission: a
	// program a pre command runs. It is part of the derivation and of the
	// store key.
	Executable bool `toml:"executable,omitempty" json:"executable,omitempty"`
	// Unpack stores a .zip, .tar, .tar.gz or .tar.xz archive (found by its
	// content) unpacked, with the path rules of a .deb: no "..", no
	// absolute paths, no links leaving the tree. Library archives are.
	Unpack bool `toml:"unpack,omitempty" json:"unpack,omitempty"`
	// Linked marks a toolchain package whose code is linked into the
	// firmware (the C library, libgcc, newlib): the SBOM lists it as
	// required, where the compiler that only ran is excluded. It is not
	// part of the derivation.
	Linked bool `toml:"linked,omitempty" json:"linked,omitempty"`
	// Dir is the base of relative file: sources (the recipe directory);
	// Load sets it. It is not part of the derivation.
	Dir string `toml:"-" json:"-"`
}

// StoreKey is the hash naming the input's unpacked content in the store
// (with the input's name): it depends on the pinned sha256 and on the file
// name a non-archive is stored under, not on the sources.
func (in Input) StoreKey() string {
	return inputKey(in.SHA256, in.StoredName(), in.Executable, in.Unpack)
}

func inputKey(sha, stored string, exec, unpack bool) string {
	return hashJSON(struct {
		Format int    `json:"format"`
		SHA256 string `json:"sha256"`
		File   string `json:"file"`
		Exec   bool   `json:"exec,omitempty"`
		Unpack bool   `json:"unpack,omitempty"`
	}{FormatVersion, sha, stored, exec, unpack})
}

// StoredName is the file name a non-archive input has in its store entry.
func (in Input) StoredName() string {
	if in.File != "" {
		return in.File
	}
	return in.Name
}

// Build is how the firmware is compiled and linked.
//
// Paths may name an input as "$in/<input-name>/path" and the recipe
// directory as "$src/path".
type Build struct {
	CFlags   []string          `toml:"cflags" json:"cflags,omitempty"`
	CXXFlags []string          `toml:"cxxflags" json:"cxxflags,omitempty"`
	ASFlags  []string          `toml:"asflags" json:"asflags,omitempty"`
	LDFlags  []string          `toml:"ldflags" json:"ldflags,omitempty"`
	Defines  map[string]string `toml:"defines" json:"defines,omitempty"`
	// Includes are include directories ("$in/…", "$src/…").
	Includes []string `toml:"includes" json:"includes,omitempty"`
	// CoreSources are globs inside inputs ("$in/<name>/…/*.c") compiled into core.a.
	CoreSources []string `toml:"core_sources" json:"core_sources,omitempty"`
	// LinkerScript is "$src/…" or "$in/<name>/…"; empty for the toolchain default.
	LinkerScript string `toml:"linker_script" json:"linker_script,omitempty"`
	// Libs are libraries linked after the objects and core.a ("m", "c_nano").
	Libs []string `toml:"libs" json:"libs,omitempty"`
	// Pre are commands run in the sandbox before compiling; argv[0] is
	// "$in/<name>/path", "$src/path" or a toolchain tool ("avr-gcc").
	Pre [][]string `toml:"pre" json:"pre,omitempty"`
}

// fileKeys are the top-level keys a recipe of any kind may have.
var fileKeys = map[string]bool{
	"name": true, "version": true, "board": true, "toolchain": true, "kind": true,
	"sources": true, "files": true, "inputs": true, "build": true, "test": true,
}

// KindHandler decodes and validates the extra top-level tables of one kind
// of recipe. It must decode what it uses with md.PrimitiveDecode, so that
// keys it does not know are reported as unknown. The value it returns
// becomes part of the derivation (it must marshal to canonical JSON: structs
// and maps, no floats whose formatting could vary).
//
// If the value implements KindDeriver, Derive calls it (with the recipe's
// Dir set) and puts its result in the derivation instead: that is where a
// kind hashes files of its own.
type KindHandler func(r *Recipe, md *toml.MetaData, ext map[string]toml.Primitive) (any, error)

// KindDeriver is implemented by kind data that needs the recipe directory
// to become part of a derivation (for example to hash files it names).
type KindDeriver interface {
	DeriveKind(r *Recipe) (any, error)
}

var kinds = map[string]KindHandler{}

// RegisterKind makes recipes of kind k loadable; call it from an init function.
func RegisterKind(k string, h KindHandler) { kinds[k] = h }

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._+-]*$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	identRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// typeErrRE matches the TOML decoder's type errors.
	typeErrRE = regexp.MustCompile(`^line (\d+) \(last key "([^"]*)"\): (.*)$`)
)

// Load reads, parses and validates dir/recipe.toml. Errors name the file
// ("dir/recipe.toml:LINE:COL: msg" for TOML errors); an unknown board wraps
// boards.ErrUnknown and an unknown toolchain ErrUnknownToolchain.
//
// dir may also name the recipe file itself.
func Load(dir string) (*Recipe, error) {
	if filepath.Base(dir) == FileName {
		if fi, err := os.Stat(dir); err == nil && fi.Mode().IsRegular() {
			dir = filepath.Dir(dir)
		}
	}
	file := filepath.Join(dir, FileName)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	r, err := Parse(file, data)
	if err != nil {
		return nil, err
	}
	r.Dir = abs
	for i := range r.Inputs {
		r.Inputs[i].Dir = abs
	}
	return r, nil
}

// Parse parses and validates recipe text; file names it in errors. The
// returned recipe has no Dir.
func Parse(file string, data []byte) (*Recipe, error) {
	r := &Recipe{File: file}
	src := string(data)
	var raw map[string]toml.Primitive
	md, err := toml.Decode(src, &raw)
	if err != nil {
		return nil, tomlError(file, err)
	}
	var f struct {
		Name      string   `toml:"name"`
		Version   string   `toml:"version"`
		Board     string   `toml:"board"`
		Toolchain string   `toml:"toolchain"`
		Kind      string   `toml:"kind"`
		Sources   []string `toml:"sources"`
		Files     []string `toml:"files"`
		Inputs    []Input  `toml:"inputs"`
		Build     Build    `toml:"build"`
		Tests     []Test   `toml:"test"`
	}
	fields := map[string]any{
		"name": &f.Name, "version": &f.Version, "board": &f.Board, "toolchain": &f.Toolchain,
		"kind": &f.Kind, "sources": &f.Sources, "files": &f.Files, "inputs": &f.Inputs, "build": &f.Build,
		"test": &f.Tests,
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !fileKeys[k] {
			if r.Ext == nil {
				r.Ext = map[string]toml.Primitive{}
			}
			r.Ext[k] = raw[k]
			continue
		}
		if err := md.PrimitiveDecode(raw[k], fields[k]); err != nil {
			return nil, tomlKeyError(file, src, k, err)
		}
	}
	r.Name, r.Version, r.Board, r.Toolchain, r.Kind = f.Name, f.Version, f.Board, f.Toolchain, f.Kind
	r.Sources, r.Files, r.Inputs, r.Build = f.Sources, f.Files, f.Inputs, f.Build
	r.Tests = f.Tests
	if r.Kind == "" {
		r.Kind = KindFirmware
	}
	if r.Kind == KindFirmware && len(r.Ext) > 0 {
		k := keys[0]
		for _, k2 := range keys {
			if !fileKeys[k2] {
				k = k2
				break
			}
		}
		return nil, fmt.Errorf("%s:%s: %w: unknown key %q", file, keyPos(src, k), ErrInvalid, k)
	}
	if r.Kind != KindFirmware {
		h, ok := kinds[r.Kind]
		if !ok {
			return nil, fmt.Errorf("%s:%s: %w: unknown kind %q (want %q)", file, keyPos(src, "kind"), ErrInvalid, r.Kind, KindFirmware)
		}
		if r.KindData, err = h(r, &md, r.Ext); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, fmt.Errorf("%s:%s: %w: unknown key %q", file, keyPos(src, k[len(k)-1]), ErrInvalid, k.String())
	}
	if err := r.validate(src); err != nil {
		return nil, err
	}
	if err := r.validateTests(src); err != nil {
		return nil, err
	}
	return r, nil
}

// tomlError formats a TOML syntax error as file:line:col: msg.
func tomlError(file string, err error) error {
	var perr toml.ParseError
	if errors.As(err, &perr) {
		col := perr.Position.Col
		if col == 0 {
			col = 1
		}
		return fmt.Errorf("%s:%d:%d: %w: %s", file, perr.Position.Line, col, ErrInvalid, perr.Message)
	}
	return fmt.Errorf("%s: %w: %s", file, ErrInvalid, strings.TrimPrefix(err.Error(), "toml: "))
}

// tomlKeyError reports a type error in the value of a top-level key. The
// decoder says `line N (last key "K"): msg`; kiln says file:N:1: K: msg.
func tomlKeyError(file, src, key string, err error) error {
	var perr toml.ParseError
	if errors.As(err, &perr) && perr.Position.Line > 0 {
		return tomlError(file, err)
	}
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	if m := typeErrRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s:1: %w: %s: %s", file, m[1], ErrInvalid, m[2], m[3])
	}
	return fmt.Errorf("%s:%s: %w: %s: %s", file, keyPos(src, key), ErrInvalid, key, msg)
}

// keyPos finds "LINE:COL" of the first line that assigns or opens key; the
// TOML decoder does not expose key positions, so this is a best effort
// ("1:1" if it is not found).
func keyPos(src, key string) string {
	for i, line := range strings.Split(src, "\n") {
		t := strings.TrimLeft(line, " \t")
		col := len(line) - len(t) + 1
		t = strings.TrimLeft(t, "[")
		for _, q := range []string{key, `"` + key + `"`, `'` + key + `'`} {
			rest, ok := strings.CutPrefix(t, q)
			if !ok {
				continue
			}
			rest = strings.TrimLeft(rest, " \t")
			if strings.HasPrefix(rest, "=") || strings.HasPrefix(rest, "]") || strings.HasPrefix(rest, ".") {
				return fmt.Sprintf("%d:%d", i+1, col)
			}
		}
		// inline tables: { key = ... }
		if j := strings.Index(line, " "+key+" ="); j >= 0 && strings.Contains(line[:j], "{") {
			return fmt.Sprintf("%d:%d", i+1, j+2)
		}
	}
	return "1:1"
}

func (r *Recipe) validate(src string) error {
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%s:%s: %w: %s", r.File, keyPos(src, key), ErrInvalid, fmt.Sprintf(format, a...))
	}
	if r.Name == "" {
		return fmt.Errorf("%s: %w: missing name", r.File, ErrInvalid)
	}
	if !nameRE.MatchString(r.Name) {
		return bad("name", "name %q: want lower-case letters, digits and . _ + -", r.Name)
	}
	if r.Version == "" {
		return fmt.Errorf("%s: %w: missing version", r.File, ErrInvalid)
	}
	if r.Board == "" {
		return fmt.Errorf("%s: %w: missing board", r.File, ErrInvalid)
	}
	board, err := boards.Get(r.Board)
	if err != nil {
		return fmt.Errorf("%s:%s: %w", r.File, keyPos(src, "board"), err)
	}
	if r.Kind == KindFirmware {
		if r.Toolchain == "" {
			return fmt.Errorf("%s: %w: missing toolchain", r.File, ErrInvalid)
		}
		if len(r.Sources) == 0 {
			return fmt.Errorf("%s: %w: missing sources", r.File, ErrInvalid)
		}
	}
	if r.Toolchain != "" {
		tc, err := LoadToolchain(r.Toolchain)
		if err != nil {
			return fmt.Errorf("%s:%s: %w", r.File, keyPos(src, "toolchain"), err)
		}
		if tc.Arch != board.Arch {
			return bad("toolchain", "toolchain %s builds for %s but board %s is %s", tc.Name, tc.Arch, board.Name, board.Arch)
		}
	}
	for _, g := range append(append([]string(nil), r.Sources...), r.Files...) {
		if err := checkRelGlob(g); err != nil {
			return bad("sources", "%v", err)
		}
	}
	seen := map[string]bool{}
	for i, in := range r.Inputs {
		if err := in.validate(); err != nil {
			return bad("inputs", "input %d: %v", i+1, err)
		}
		if seen[in.Name] {
			return bad("inputs", "input %q is listed twice", in.Name)
		}
		seen[in.Name] = true
	}
	b := r.Build
	for k := range b.Defines {
		if !identRE.MatchString(k) {
			return bad("defines", "define %q is not a C identifier", k)
		}
	}
	refs := append([]string(nil), b.Includes...)
	refs = append(refs, b.CoreSources...)
	if b.LinkerScript != "" {
		refs = append(refs, b.LinkerScript)
	}
	for _, p := range refs {
		if err := r.checkRef(p, seen); err != nil {
			return bad("build", "%v", err)
		}
	}
	for _, g := range b.CoreSources {
		if !strings.HasPrefix(g, "$in/") {
			return bad("core_sources", "core source %q must be a glob inside an input ($in/<name>/…)", g)
		}
	}
	for i, argv := range b.Pre {
		if len(argv) == 0 || argv[0] == "" {
			return bad("pre", "pre command %d is empty", i+1)
		}
		if strings.HasPrefix(argv[0], "$") {
			if err := r.checkRef(argv[0], seen); err != nil {
				return bad("pre", "pre command %d: %v", i+1, err)
			}
		} else if strings.Contains(argv[0], "/") {
			return bad("pre", "pre command %d: %q must be $in/…, $src/… or a toolchain tool", i+1, argv[0])
		}
	}
	for _, l := range b.Libs {
		if l == "" || strings.ContainsAny(l, "/ ") {
			return bad("libs", "lib %q: want a library name such as \"m\"", l)
		}
	}
	return nil
}

// checkRelGlob accepts a glob relative to the recipe directory that stays inside it.
func checkRelGlob(g string) error {
	if g == "" {
		return errors.New("empty glob")
	}
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("glob %q: %v", g, err)
	}
	if strings.Contains(g, "**") {
		// path.Match would take ** as *, which never crosses a slash: a
		// recipe that means "every directory below" would silently get one.
		return fmt.Errorf("glob %q: ** is not supported (a * never crosses a /): list a glob per directory, such as src/*.c and src/lib/*.c", g)
	}
	if path.IsAbs(g) || strings.Contains(g, "\\") {
		return fmt.Errorf("glob %q must be relative to the recipe directory", g)
	}
	for _, part := range strings.Split(g, "/") {
		if part == ".." {
			return fmt.Errorf("glob %q leaves the recipe directory", g)
		}
	}
	return nil
}

// checkRef checks a "$in/<name>/…" or "$src/…" path.
func (r *Recipe) checkRef(p string, inputs map[string]bool) error {
	switch {
	case p == "$src" || strings.HasPrefix(p, "$src/"):
		return checkRelGlob(strings.TrimPrefix(strings.TrimPrefix(p, "$src"), "/") + "x")
	case strings.HasPrefix(p, "$in/"):
		rest := strings.TrimPrefix(p, "$in/")
		name, sub, _ := strings.Cut(rest, "/")
		if !inputs[name] {
			return fmt.Errorf("%q names input %q, which the recipe does not declare", p, name)
		}
		for _, part := range strings.Split(sub, "/") {
			if part == ".." {
				return fmt.Errorf("%q leaves its input", p)
			}
		}
		return nil
	}
	return fmt.Errorf("path %q: want $in/<input>/… or $src/…", p)
}

func (in Input) validate() error {
	if !nameRE.MatchString(in.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits and . _ + -", in.Name)
	}
	if !sha256RE.MatchString(in.SHA256) {
		return fmt.Errorf("%s: sha256 %q is not 64 lower-case hex digits", in.Name, in.SHA256)
	}
	if len(in.Sources) == 0 {
		return fmt.Errorf("%s: no sources", in.Name)
	}
	for _, s := range in.Sources {
		if err := CheckSource(s); err != nil {
			return fmt.Errorf("%s: %v", in.Name, err)
		}
	}
	if in.Subdir != "" {
		if err := checkRelGlob(in.Subdir); err != nil {
			return fmt.Errorf("%s: subdir: %v", in.Name, err)
		}
	}
	if in.Unpack && (in.Executable || in.File != "") {
		return fmt.Errorf("%s: unpack stores an archive's content: it takes neither file nor executable", in.Name)
	}
	if in.File != "" && (strings.ContainsAny(in.File, "/\\") || in.File == "." || in.File == "..") {
		return fmt.Errorf("%s: file %q must be a plain file name", in.Name, in.File)
	}
	return nil
}

// CheckSource validates one source of an input: "deb:NAME[:ARCH]=VERSION"
// (optionally "@SUITES/COMPONENTS"), "https://…" or "file:PATH".
func CheckSource(s string) error {
	switch {
	case strings.HasPrefix(s, "deb:"):
		if _, err := ParseDebSource(s); err != nil {
			return err
		}
	case strings.HasPrefix(s, "https://"):
		if len(s) == len("https://") || strings.ContainsAny(s, " \t") {
			return fmt.Errorf("source %q: bad URL", s)
		}
	case strings.HasPrefix(s, "file:"):
		if len(s) == len("file:") {
			return fmt.Errorf("source %q: empty path", s)
		}
	default:
		return fmt.Errorf("source %q: want deb:NAME=VERSION, https://… or file:PATH", s)
	}
	return nil
}

// DebSource is a parsed deb: source,
// "deb:NAME[:ARCH]=VERSION[@SUITES/COMPONENTS]". SUITES and COMPONENTS are
// comma lists: "deb:raspi-firmware=1.20220830+ds-1@bookworm/non-free-firmware"
// asks apt for the package from the host's Debian mirrors with the
// non-free-firmware component (which a host's sources.list often lacks);
// an empty SUITES keeps the host's suites.
type DebSource struct {
	Name, Arch, Version string
	Suites, Components  []string
}

// String is the source as a recipe writes it.
func (d DebSource) String() string {
	s := "deb:" + d.Name
	if d.Arch != "" {
		s += ":" + d.Arch
	}
	s += "=" + d.Version
	if len(d.Suites)+len(d.Components) > 0 {
		s += "@" + strings.Join(d.Suites, ",") + "/" + strings.Join(d.Components, ",")
	}
	return s
}

// Spec is NAME=VERSION, what apt-get download is given.
func (d DebSource) Spec() string { return d.Name + "=" + d.Version }

var debWordRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]*$`)

// ParseDebSource parses a deb: source.
func ParseDebSource(s string) (DebSource, error) {
	bad := func() (DebSource, error) {
		return DebSource{}, fmt.Errorf("source %q: want deb:NAME=VERSION (or deb:NAME:ARCH=VERSION, optionally @SUITES/COMPONENTS)", s)
	}
	rest, ok := strings.CutPrefix(s, "deb:")
	if !ok || strings.ContainsAny(s, " \t") {
		return bad()
	}
	var d DebSource
	rest, where, hasWhere := strings.Cut(rest, "@")
	nameArch, ver, ok := strings.Cut(rest, "=")
	if !ok || ver == "" || strings.Contains(ver, "/") {
		return bad()
	}
	d.Version = ver
	d.Name, d.Arch, _ = strings.Cut(nameArch, ":")
	if !debWordRE.MatchString(d.Name) || (strings.Contains(nameArch, ":") && !debWordRE.MatchString(d.Arch)) {
		return bad()
	}
	if hasWhere {
		suites, comps, ok := strings.Cut(where, "/")
		if !ok || comps == "" {
			return bad()
		}
		for _, l := range []struct {
			text string
			dst  *[]string
		}{{suites, &d.Suites}, {comps, &d.Components}} {
			if l.text == "" {
				continue
			}
			for _, w := range strings.Split(l.text, ",") {
				if !debWordRE.MatchString(w) {
					return bad()
				}
				*l.dst = append(*l.dst, w)
			}
		}
	}
	return d, nil
}

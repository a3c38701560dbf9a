// Package sketchinit writes the recipe of an Arduino sketch (`kiln init`):
// the core pinned from Debian, the board from kiln's board file, and the
// libraries the sketch needs resolved from an Arduino library index —
// named ones and, transitively, their dependencies and the libraries the
// sketch's #includes call for — each pinned by sha256 and fetched into
// the store, so `kiln build` then works offline.
package sketchinit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/firmware/arduino"
	"kiln.dev/kiln/firmware/arduino/libindex"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// DefaultIndex is Arduino's library index.
const DefaultIndex = "https://downloads.arduino.cc/libraries/library_index.json"

// Sentinel errors.
var (
	// ErrExists: the sketch already has a recipe (use Update).
	ErrExists = errors.New("recipe already exists")
	// ErrNoLibrary: a header the sketch includes is provided by no library
	// of the core or the index.
	ErrNoLibrary = errors.New("no library provides a header")
	// ErrArch: a library's architectures exclude the board's.
	ErrArch = errors.New("library does not support the board's architecture")
)

// Options says what to initialise.
type Options struct {
	Sketch string // the sketch directory
	Board  string // a kiln board with an arduino mapping
	// Libraries are requested as NAME or NAME@VERSION.
	Libraries []string
	Index     string // URL (https:// or file:) of library_index.json; "" for DefaultIndex
	// Update re-resolves an existing recipe (keeping the libraries it was
	// asked for by name).
	Update bool
	Store  *store.Store
	HTTP   *http.Client
	Log    func(format string, args ...any)
	// Core pins the core input; nil asks apt for Debian's arduino-core-avr.
	Core *recipes.Input
}

// Pinned is one library the recipe pins.
type Pinned struct {
	Name, Version, Input, URL, SHA256 string
	// Why: "requested", "included by the sketch (X.h)" or "dependency of …".
	Why string
}

// Result is what Init wrote.
type Result struct {
	Recipe    string
	Core      recipes.Input
	Libraries []Pinned
}

var (
	includeRE   = regexp.MustCompile(`(?m)^\s*#\s*include\s*[<"]([^>"]+)[>"]`)
	requestedRE = regexp.MustCompile(`(?m)^# kiln init --library (\S+)$`)
	inputNameRE = regexp.MustCompile(`[^a-z0-9._+-]+`)
)

// InputName is the recipe input name of a library: its name lower-cased,
// other characters than letters, digits and . _ + - made '-'.
func InputName(lib string) string {
	n := strings.Trim(inputNameRE.ReplaceAllString(strings.ToLower(lib), "-"), "-")
	if n == "" {
		n = "library"
	}
	return n
}

// Init resolves and writes SKETCH/recipe.toml.
func Init(ctx context.Context, o Options) (*Result, error) {
	logf := func(format string, a ...any) {
		if o.Log != nil {
			o.Log(format, a...)
		}
	}
	dir, err := filepath.Abs(o.Sketch)
	if err != nil {
		return nil, err
	}
	files, err := arduino.SketchFiles(dir)
	if err != nil {
		return nil, err
	}
	recipeFile := filepath.Join(dir, recipes.FileName)
	requested := append([]string(nil), o.Libraries...)
	if old, err := os.ReadFile(recipeFile); err == nil {
		if !o.Update {
			return nil, fmt.Errorf("init: %s: %w", recipeFile, ErrExists)
		}
		for _, m := range requestedRE.FindAllStringSubmatch(string(old), -1) {
			if !containsLib(requested, m[1]) {
				requested = append(requested, m[1])
			}
		}
	}
	board, err := boards.Get(o.Board)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if board.Arduino == nil {
		return nil, fmt.Errorf("init: board %s has no arduino mapping (no boards.txt ID in its board file)", board.Name)
	}
	toolchain := "avr-gcc-5.4-arduino"
	if board.Arch != "avr" {
		return nil, fmt.Errorf("init: board %s is %s: kiln builds Arduino sketches for AVR boards only", board.Name, board.Arch)
	}
	f := &fetch.Fetcher{Store: o.Store, HTTP: o.HTTP, Log: o.Log}
	core := o.Core
	if core == nil {
		if core, err = debianCore(ctx, f); err != nil {
			return nil, err
		}
	}
	corePath, err := f.Input(ctx, *core)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	platDir, err := arduino.FindPlatform(corePath)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	pl, err := arduino.LoadPlatform(platDir)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	// Headers the sketch gets without a library from the index: its own,
	// the core's and variant's, the core's bundled libraries'.
	have := map[string]bool{}
	for _, fl := range files {
		have[filepath.Base(fl)] = true
	}
	props, err := pl.BuildProps(arduino.Selection{Board: board.Arduino.Board, Options: board.Arduino.Options}, "", "", 0)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	for _, d := range []string{props["build.core.path"], props["build.variant.path"]} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			have[e.Name()] = true
		}
	}
	bundled, err := arduino.LoadLibraries([]struct{ Dir, Location string }{{filepath.Join(platDir, "libraries"), "platform"}})
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	for _, l := range bundled.All {
		for _, h := range l.Headers {
			have[h] = true
		}
	}
	var includes []string
	seen := map[string]bool{}
	for _, fl := range files {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(fl)))
		if err != nil {
			return nil, err
		}
		for _, m := range includeRE.FindAllStringSubmatch(string(data), -1) {
			h := strings.TrimSpace(m[1])
			if !have[h] && !have[filepath.Base(h)] && !seen[h] {
				seen[h] = true
				includes = append(includes, h)
			}
		}
	}
	var pinned []Pinned
	if len(requested) > 0 || len(includes) > 0 {
		ixURL := o.Index
		if ixURL == "" {
			ixURL = DefaultIndex
		}
		logf("read library index %s", ixURL)
		ix, err := readIndex(ctx, o.HTTP, ixURL)
		if err != nil {
			return nil, err
		}
		var reqs []libindex.Dependency
		why := map[string]string{}
		for _, r := range requested {
			name, ver, _ := strings.Cut(r, "@")
			d := libindex.Dependency{Name: name}
			if ver != "" {
				d.Version = "=" + ver
			}
			reqs = append(reqs, d)
			why[name] = "requested"
		}
		// Libraries the sketch's includes need, unless a requested one
		// provides the header.
		provided := map[string]bool{}
		for _, d := range reqs {
			for _, r := range ix.Releases(d.Name) {
				for _, h := range r.ProvidesIncludes {
					provided[h] = true
				}
			}
		}
		for _, h := range includes {
			if provided[h] {
				continue
			}
			cands := ix.Providing(h)
			if len(cands) == 0 {
				return nil, &MissingError{Header: h, Similar: similar(ix, h)}
			}
			reqs = append(reqs, libindex.Dependency{Name: cands[0].Name})
			if why[cands[0].Name] == "" {
				why[cands[0].Name] = "included by the sketch (" + h + ")"
			}
			if len(cands) > 1 {
				var others []string
				for _, c := range cands[1:] {
					others = append(others, c.Name)
				}
				logf("%s: %s chosen (also provided by %s)", h, cands[0].Name, strings.Join(others, ", "))
			}
			for _, hh := range cands[0].ProvidesIncludes {
				provided[hh] = true
			}
		}
		rels, err := ix.Resolve(reqs)
		if err != nil {
			return nil, fmt.Errorf("init: %w", err)
		}
		for _, r := range rels {
			if !archOK(r.Architectures, board.Arch) {
				return nil, fmt.Errorf("init: %w: %s %s supports %s, board %s is %s", ErrArch, r.Name, r.Version, strings.Join(r.Architectures, ", "), board.Name, board.Arch)
			}
			sum, err := r.SHA256()
			if err != nil {
				return nil, fmt.Errorf("init: %w", err)
			}
			w := why[r.Name]
			if w == "" {
				w = "dependency"
			}
			pinned = append(pinned, Pinned{Name: r.Name, Version: r.Version, Input: InputName(r.Name), URL: r.URL, SHA256: sum, Why: w})
		}
	}
	// Fetch every library now: the checksum is verified before anything
	// enters the store, and kiln build needs no network afterwards.
	for _, p := range pinned {
		in := recipes.Input{Name: p.Input, Sources: []string{p.URL}, SHA256: p.SHA256, Unpack: true, Dir: dir}
		if _, err := f.Input(ctx, in); err != nil {
			return nil, fmt.Errorf("init: library %s %s: %w", p.Name, p.Version, err)
		}
	}
	text := recipeText(dir, board.Name, toolchain, *core, pinned, requested)
	if _, err := recipes.Parse(recipeFile, []byte(text)); err != nil {
		return nil, fmt.Errorf("init: the recipe kiln wrote does not parse: %w", err)
	}
	tmp := recipeFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if err := os.Rename(tmp, recipeFile); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("init: %w", err)
	}
	return &Result{Recipe: recipeFile, Core: *core, Libraries: pinned}, nil
}

func containsLib(list []string, lib string) bool {
	name, _, _ := strings.Cut(lib, "@")
	for _, l := range list {
		n, _, _ := strings.Cut(l, "@")
		if n == name {
			return true
		}
	}
	return false
}

func archOK(archs []string, arch string) bool {
	if len(archs) == 0 {
		return true
	}
	for _, a := range archs {
		if a == "*" || a == arch {
			return true
		}
	}
	return false
}

// MissingError is ErrNoLibrary with the index's nearest names.
type MissingError struct {
	Header  string
	Similar []string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("init: %s: neither the core nor the library index provides %s", ErrNoLibrary.Error(), e.Header)
}

func (e *MissingError) Unwrap() error { return ErrNoLibrary }

// similar lists index libraries whose name resembles the header's.
func similar(ix *libindex.Index, header string) []string {
	base := strings.ToLower(strings.TrimSuffix(filepath.Base(header), filepath.Ext(header)))
	var out []string
	for _, n := range ix.Names() {
		ln := strings.ToLower(n)
		if strings.Contains(ln, base) || strings.Contains(base, strings.ReplaceAll(ln, " ", "_")) {
			out = append(out, n)
		}
	}
	return out
}

func readIndex(ctx context.Context, c *http.Client, url string) (*libindex.Index, error) {
	var data []byte
	var err error
	switch {
	case strings.HasPrefix(url, "file:"):
		data, err = os.ReadFile(strings.TrimPrefix(url, "file:"))
	case strings.HasPrefix(url, "https://"):
		if c == nil {
			c = http.DefaultClient
		}
		var req *http.Request
		if req, err = http.NewRequestWithContext(ctx, http.MethodGet, url, nil); err == nil {
			var resp *http.Response
			if resp, err = c.Do(req); err == nil {
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("http status %s", resp.Status)
				} else {
					data, err = io.ReadAll(io.LimitReader(resp.Body, 256<<20))
				}
			}
		}
	default:
		return nil, fmt.Errorf("init: index %q: want https://… or file:PATH", url)
	}
	if err != nil {
		return nil, fmt.Errorf("init: library index %s: %w", url, err)
	}
	ix, err := libindex.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("init: library index %s: %w", url, err)
	}
	return ix, nil
}

// debianCore pins Debian's arduino-core-avr as apt knows it today (the
// version apt would install and the sha256 of its .deb in the package
// index), with the snapshot archive's copy as the durable fallback.
func debianCore(ctx context.Context, f *fetch.Fetcher) (*recipes.Input, error) {
	p, err := f.ResolvePin(ctx, "deb:arduino-core-avr=0", true)
	if err != nil {
		return nil, fmt.Errorf("init: Debian's arduino-core-avr: %w", err)
	}
	return &recipes.Input{Name: recipes.DefaultArduinoCore, Sources: []string{p.Source, p.Snapshot}, SHA256: p.SHA256}, nil
}

// recipeText is the recipe kiln init writes.
func recipeText(dir, board, toolchain string, core recipes.Input, libs []Pinned, requested []string) string {
	var b strings.Builder
	name := InputName(filepath.Base(dir))
	fmt.Fprintf(&b, "# Written by kiln init: every input pinned by sha256; kiln init --update re-resolves.\n")
	for _, r := range requested {
		fmt.Fprintf(&b, "# kiln init --library %s\n", r)
	}
	fmt.Fprintf(&b, "name = %q\nversion = \"1.0.0\"\nkind = \"arduino\"\nboard = %q\ntoolchain = %q\n", name, board, toolchain)
	if strings.HasPrefix(toolchain, "avr-gcc-5.4") {
		fmt.Fprintf(&b, "# avr-libc 2.0 with gcc 5.4 lacks DECIMAL_DIG, which the core's WString.cpp uses.\n")
		fmt.Fprintf(&b, "arduino.properties = { \"compiler.cpp.extra_flags\" = \"-DDECIMAL_DIG=__DECIMAL_DIG__\" }\n")
	}
	writeInput := func(comment string, in recipes.Input) {
		fmt.Fprintf(&b, "\n# %s\n[[inputs]]\nname = %q\nsources = [", comment, in.Name)
		for i, s := range in.Sources {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", s)
		}
		fmt.Fprintf(&b, "]\nsha256 = %q\n", in.SHA256)
		if in.Unpack {
			b.WriteString("unpack = true\n")
		}
	}
	writeInput("The Arduino AVR core (with its bundled libraries), from Debian.", core)
	sort.Slice(libs, func(i, j int) bool { return libs[i].Name < libs[j].Name })
	for _, l := range libs {
		writeInput(fmt.Sprintf("%s %s: %s.", l.Name, l.Version, l.Why), recipes.Input{Name: l.Input, Sources: []string{l.URL}, SHA256: l.SHA256, Unpack: true})
	}
	return b.String()
}

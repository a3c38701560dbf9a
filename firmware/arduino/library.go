package arduino

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrBadLibrary: a library is malformed (library.properties unreadable,
// both src/ and utility/, no headers).
var ErrBadLibrary = errors.New("bad library")

// Library is one Arduino library directory, loaded as arduino-builder 1.3
// loads it (libraries_loader.go).
type Library struct {
	Name         string // the directory's name: arduino-builder 1.3 resolves by it
	Dir          string
	SrcDir       string // src/ (1.5 recursive layout) or Dir (flat layout)
	UtilityDir   string // flat layout's utility/, if any
	Recursive    bool
	Legacy       bool // no library.properties
	Archs        []string
	DotALinkage  bool
	Precompiled  string
	Props        Props // library.properties ("" for legacy)
	PropsName    string
	PropsVersion string
	Location     string // "platform" or "user": where the library came from
	Headers      []string
	InputName    string // the kiln input holding it ("" for the core's)
}

// LoadLibrary reads one library directory.
func LoadLibrary(dir, location string) (*Library, error) {
	l := &Library{Name: filepath.Base(dir), Dir: dir, Location: location}
	pfile := filepath.Join(dir, "library.properties")
	if fileExists(pfile) {
		p, _, err := LoadProps(pfile)
		if err != nil {
			return nil, fmt.Errorf("arduino: library %s: %w: %v", l.Name, ErrBadLibrary, err)
		}
		l.Props = p
		l.PropsName, l.PropsVersion = p["name"], p["version"]
		if dirExists(filepath.Join(dir, "src")) {
			l.Recursive, l.SrcDir = true, filepath.Join(dir, "src")
		} else {
			l.SrcDir = dir
			if dirExists(filepath.Join(dir, "utility")) {
				l.UtilityDir = filepath.Join(dir, "utility")
			}
		}
		arch := p["architectures"]
		if arch == "" {
			arch = "*"
		}
		for _, a := range strings.Split(arch, ",") {
			l.Archs = append(l.Archs, strings.TrimSpace(a))
		}
		l.DotALinkage = strings.TrimSpace(p["dot_a_linkage"]) == "true"
		l.Precompiled = strings.TrimSpace(p["precompiled"])
	} else {
		l.Legacy, l.SrcDir, l.Archs = true, dir, []string{"*"}
		if dirExists(filepath.Join(dir, "utility")) {
			l.UtilityDir = filepath.Join(dir, "utility")
		}
	}
	ents, err := os.ReadDir(l.SrcDir)
	if err != nil {
		return nil, fmt.Errorf("arduino: library %s: %w", l.Name, err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			switch filepath.Ext(e.Name()) {
			case ".h", ".hpp", ".hh":
				l.Headers = append(l.Headers, e.Name())
			}
		}
	}
	return l, nil
}

// CompatibleWith reports whether the library's architectures include arch.
func (l *Library) CompatibleWith(arch string) bool {
	return contains(l.Archs, "*") || contains(l.Archs, arch)
}

// Libraries is the set of libraries a build can use, in arduino-builder's
// folder order (the platform's libraries, then the user's).
type Libraries struct {
	All     []*Library
	headers map[string][]*Library
}

// LoadLibraries loads every library directory inside each of dirs (each
// dir holds library folders, like a sketchbook's libraries/).
func LoadLibraries(dirs []struct{ Dir, Location string }) (*Libraries, error) {
	ls := &Libraries{headers: map[string][]*Library{}}
	for _, d := range dirs {
		ents, err := os.ReadDir(d.Dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("arduino: libraries: %w", err)
		}
		for _, e := range ents {
			p := filepath.Join(d.Dir, e.Name())
			if !dirExists(p) {
				continue
			}
			l, err := LoadLibrary(p, d.Location)
			if err != nil {
				return nil, err
			}
			ls.Add(l)
		}
	}
	return ls, nil
}

// Add adds one library after the others.
func (ls *Libraries) Add(l *Library) {
	if ls.headers == nil {
		ls.headers = map[string][]*Library{}
	}
	ls.All = append(ls.All, l)
	for _, h := range l.Headers {
		ls.headers[h] = append(ls.headers[h], l)
	}
}

// Providers lists the libraries whose source folder holds header.
func (ls *Libraries) Providers(header string) []*Library {
	return append([]*Library(nil), ls.headers[header]...)
}

// Resolve picks the library for a missing header with arduino-builder
// 1.3.25's rules (resolve_library.go): nil if none provides it or one of
// the providers is already imported. arch is the platform's architecture.
func (ls *Libraries) Resolve(header string, imported []*Library, arch string) *Library {
	libs := ls.Providers(header)
	if len(libs) == 0 {
		return nil
	}
	for _, i := range imported {
		for _, c := range libs {
			if i == c {
				return nil
			}
		}
	}
	if len(libs) == 1 {
		return libs[0]
	}
	for i, j := 0, len(libs)-1; i < j; i, j = i+1, j-1 {
		libs[i], libs[j] = libs[j], libs[i]
	}
	lib := findBestLibraryWithHeader(header, compatibleLibs(libs, arch, true))
	if lib == nil {
		lib = findBestLibraryWithHeader(header, libs)
	}
	if lib == nil {
		libs = append(compatibleLibs(libs, arch, false), libs...)
		lib = libs[0]
	}
	for _, i := range imported {
		if i.Name == lib.Name {
			return i
		}
	}
	return lib
}

func compatibleLibs(libs []*Library, arch string, reorder bool) []*Library {
	var out []*Library
	for _, l := range libs {
		generic := len(l.Archs) == 0 || contains(l.Archs, "*")
		if !generic && !contains(l.Archs, arch) {
			continue
		}
		if !generic && len(out) != 0 && contains(out[0].Archs, "*") && reorder {
			out = append([]*Library{l}, out...)
		} else {
			out = append(out, l)
		}
	}
	return out
}

func findBestLibraryWithHeader(header string, libs []*Library) *Library {
	name := strings.Replace(header, filepath.Ext(header), "", -1)
	for _, n := range []string{name, strings.ToLower(name)} {
		for _, match := range []func(l, n string) bool{
			func(l, n string) bool { return l == n },
			func(l, n string) bool { return l == n+"-master" },
			strings.HasPrefix, strings.HasSuffix, strings.Contains,
		} {
			for _, l := range libs {
				ln, nn := simplify(l.Name), simplify(n)
				if match(ln, nn) {
					return l
				}
			}
		}
	}
	return nil
}

func simplify(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", " ")) }

// sourceDirs are the folders of a library's sources (recursive or not).
func (l *Library) sourceDirs() []struct {
	Dir     string
	Recurse bool
} {
	out := []struct {
		Dir     string
		Recurse bool
	}{{l.SrcDir, l.Recursive}}
	if l.UtilityDir != "" {
		out = append(out, struct {
			Dir     string
			Recurse bool
		}{l.UtilityDir, false})
	}
	return out
}

// sortedNames returns library names for messages.
func names(libs []*Library) string {
	var n []string
	for _, l := range libs {
		n = append(n, l.Name)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

package firmware

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"kiln.dev/kiln/recipes"
)

// Impurity is a file the build takes from the host rather than the store:
// the host's C library and dynamic loader, which the toolchain's programs
// load. The manifest names each with its hash.
type Impurity struct {
	// Path is where the file is on the host (symbolic links resolved).
	Path string `json:"path"`
	// Target is where the sandbox shows it.
	Target string `json:"target"`
	SHA256 string `json:"sha256"`
}

// hostLibDir is where the sandbox shows the host libraries; it is on the
// toolchain's LD_LIBRARY_PATH after the toolchain's own library directories.
const hostLibDir = "/hostlib"

// hostLibSearch is where the host's dynamic loader looks for libraries.
var hostLibSearch = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"}

var closureCache sync.Map // toolchain tree → []Impurity

// hostClosure finds the host files the toolchain in tree needs: the program
// interpreter of its programs and every shared library they (transitively)
// need that the toolchain's own libDirs do not hold.
func hostClosure(tree string, libDirs []string) ([]Impurity, error) {
	key := tree + "\x00" + strings.Join(libDirs, "\x00")
	if v, ok := closureCache.Load(key); ok {
		return v.([]Impurity), nil
	}
	own := map[string]bool{}
	for _, d := range libDirs {
		ents, _ := os.ReadDir(filepath.Join(tree, d))
		for _, e := range ents {
			own[e.Name()] = true
		}
	}
	needed := map[string]bool{}
	interps := map[string]bool{}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode()&0o111 == 0 && !strings.Contains(d.Name(), ".so") {
			return nil
		}
		libs, interp := elfNeeds(p)
		for _, l := range libs {
			needed[l] = true
		}
		if interp != "" {
			interps[interp] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("firmware: scan toolchain %s: %w", tree, err)
	}
	var out []Impurity
	seen := map[string]bool{}
	queue := make([]string, 0, len(needed))
	for l := range needed {
		queue = append(queue, l)
	}
	sort.Strings(queue)
	// The loader is found as the program interpreter; libc names it too.
	for in := range interps {
		seen[filepath.Base(in)] = true
	}
	for len(queue) > 0 {
		lib := queue[0]
		queue = queue[1:]
		if own[lib] || seen[lib] {
			continue
		}
		seen[lib] = true
		host := findHostLib(lib)
		if host == "" {
			return nil, fmt.Errorf("firmware: toolchain %s needs %s, which neither it nor the host has", tree, lib)
		}
		real, err := filepath.EvalSymlinks(host)
		if err != nil {
			return nil, err
		}
		out = append(out, Impurity{Path: real, Target: hostLibDir + "/" + lib})
		more, _ := elfNeeds(real)
		queue = append(queue, more...)
	}
	for in := range interps {
		real, err := filepath.EvalSymlinks(in)
		if err != nil {
			return nil, fmt.Errorf("firmware: program interpreter %s: %w", in, err)
		}
		out = append(out, Impurity{Path: real, Target: in})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	for i := range out {
		sum, err := recipes.HashFile(out[i].Path)
		if err != nil {
			return nil, err
		}
		out[i].SHA256 = sum
	}
	closureCache.Store(key, out)
	return out, nil
}

// elfNeeds returns the DT_NEEDED libraries and the program interpreter of a
// host ELF file; other files give nothing.
func elfNeeds(path string) ([]string, string) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, ""
	}
	defer f.Close()
	if f.Machine != hostMachine() || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return nil, ""
	}
	libs, _ := f.ImportedLibraries()
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP && p.Filesz < 4096 { // a path; a hostile size is not allocated
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				interp = strings.TrimRight(string(b), "\x00")
			}
		}
	}
	return libs, interp
}

var hostMachineOnce = sync.OnceValue(func() elf.Machine {
	f, err := elf.Open("/proc/self/exe")
	if err != nil {
		return elf.EM_X86_64
	}
	defer f.Close()
	return f.Machine
})

func hostMachine() elf.Machine { return hostMachineOnce() }

func findHostLib(name string) string {
	for _, d := range hostLibSearch {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

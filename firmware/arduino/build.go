package arduino

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// ErrCompile: a compiler, the archiver or the linker failed; the error
// text carries the tool's full output.
var ErrCompile = errors.New("compile failed")

// ErrMissingLibrary: a sketch or library includes a header no library
// provides. The error names the header and the file including it.
var ErrMissingLibrary = errors.New("no library provides a header")

// Job is one sketch build, run inside the build sandbox by the firmware
// builder (every path is as the sandbox sees it).
type Job struct {
	Platform  string    `json:"platform"` // the platform directory (platform.txt, boards.txt)
	Selection Selection `json:"selection"`
	// Libraries holds the pinned libraries, one folder each (like a
	// sketchbook's libraries/); the platform's own libraries/ is used too.
	Libraries string `json:"libraries,omitempty"`
	Sketch    string `json:"sketch"`     // the sketch directory
	BuildPath string `json:"build_path"` // arduino's build directory (empty or absent)
	ELF       string `json:"elf"`        // where the linked ELF is copied
	Epoch     int64  `json:"epoch"`
	Jobs      int    `json:"jobs"`
	// Ctags is the ctags program (arduino-ctags from the toolchain).
	Ctags string `json:"ctags"`
	// Cache, if set, is a directory of objects and discovery results kept
	// between builds, keyed by Inputs, the command line and (for the
	// sketch's own files) the sketch's content.
	Cache string `json:"cache,omitempty"`
	// Inputs identifies by content everything a compile may read besides
	// the sketch: the toolchain, the core and the libraries (their hashes).
	Inputs string `json:"inputs,omitempty"`
}

// Result is what a build did: the libraries it used, in link order, and
// the log of every command with its output.
type Result struct {
	Libraries []UsedLibrary
	Log       []byte
}

// UsedLibrary names one library a build linked and why it was chosen.
type UsedLibrary struct {
	Name, Dir string
	Header    string   // the include that pulled it in
	Others    []string // other libraries that provide the header
}

type builder struct {
	job   Job
	env   []string
	props Props
	pl    *Platform
	sk    *Sketch
	libs  *Libraries

	includes    []string
	imported    []*Library
	used        []UsedLibrary
	sketchBuild string
	sketchHash  string

	mu  sync.Mutex
	log bytes.Buffer
}

// Run builds the sketch: preprocessing, library discovery, prototypes,
// compiles, the core archive and the link, with the recipes of the
// platform's platform.txt, as arduino-builder 1.3.25 does. env is the
// environment of every command (the toolchain's PATH).
func Run(ctx context.Context, job Job, env []string) (*Result, error) {
	b := &builder{job: job, env: env}
	err := b.run(ctx)
	return &Result{Libraries: b.used, Log: b.log.Bytes()}, err
}

func (b *builder) logf(format string, a ...any) {
	b.mu.Lock()
	fmt.Fprintf(&b.log, format, a...)
	b.mu.Unlock()
}

func (b *builder) run(ctx context.Context) error {
	var err error
	if b.pl, err = LoadPlatform(b.job.Platform); err != nil {
		return err
	}
	if b.sk, err = LoadSketch(b.job.Sketch); err != nil {
		return err
	}
	{
		h := sha256.New()
		for _, f := range append(append([]SketchFile{b.sk.Main}, b.sk.Others...), b.sk.Additional...) {
			fmt.Fprintf(h, "%s\x00%d\x00%s", f.Path, len(f.Source), f.Source)
		}
		b.sketchHash = hex.EncodeToString(h.Sum(nil))
	}
	if b.props, err = b.pl.BuildProps(b.job.Selection, b.job.BuildPath, b.sk.Main.Path, b.job.Epoch); err != nil {
		return err
	}
	dirs := []struct{ Dir, Location string }{{filepath.Join(b.pl.Dir, "libraries"), "platform"}}
	if b.job.Libraries != "" {
		dirs = append(dirs, struct{ Dir, Location string }{b.job.Libraries, "user"})
	}
	if b.libs, err = LoadLibraries(dirs); err != nil {
		return err
	}
	b.sketchBuild = filepath.Join(b.job.BuildPath, "sketch")
	for _, d := range []string{b.sketchBuild, filepath.Join(b.job.BuildPath, "preproc"), filepath.Join(b.job.BuildPath, "core"), filepath.Join(b.job.BuildPath, "libraries")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("arduino: %w", err)
		}
	}
	// The sketch: the merged .ino, and its other files copied beside it.
	merged, lineOffset := b.sk.Merge()
	mergedPath := filepath.Join(b.sketchBuild, filepath.Base(b.sk.Main.Path)+".cpp")
	if err := os.WriteFile(mergedPath, []byte(merged), 0o644); err != nil {
		return fmt.Errorf("arduino: %w", err)
	}
	for _, f := range b.sk.Additional {
		rel, _ := filepath.Rel(b.sk.Dir, f.Path)
		dst := filepath.Join(b.sketchBuild, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("arduino: %w", err)
		}
		if err := os.WriteFile(dst, []byte(f.Source), 0o644); err != nil {
			return fmt.Errorf("arduino: %w", err)
		}
	}
	if err := b.discover(ctx, mergedPath); err != nil {
		return err
	}
	if err := b.prototypes(ctx, mergedPath, merged, lineOffset); err != nil {
		return err
	}
	return b.compileAndLink(ctx)
}

// srcFile is a source file queued for include discovery.
type srcFile struct {
	path string
	lib  *Library
}

var includeRE = regexp.MustCompile("(?ms)^\\s*#[ \t]*include\\s*[<\"](\\S+)[\">]")

// discover finds the libraries the sketch uses, as arduino-builder 1.3's
// ContainerFindIncludes: preprocess each file; a missing header pulls in
// the library providing it, whose sources are queued in turn.
func (b *builder) discover(ctx context.Context, merged string) error {
	b.includes = []string{b.props["build.core.path"]}
	if v := b.props["build.variant.path"]; v != "" {
		b.includes = append(b.includes, v)
	}
	queue := []srcFile{{path: merged}}
	push := func(f srcFile) {
		for _, q := range queue {
			if q == f {
				return
			}
		}
		queue = append(queue, f)
	}
	for _, p := range findSources(b.sketchBuild, false) {
		push(srcFile{path: p})
	}
	if dirExists(filepath.Join(b.sketchBuild, "src")) {
		for _, p := range findSources(filepath.Join(b.sketchBuild, "src"), true) {
			push(srcFile{path: p})
		}
	}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		for {
			includes := b.includes
			if f.lib != nil && f.lib.UtilityDir != "" {
				includes = append(append([]string(nil), includes...), f.lib.UtilityDir)
			}
			header, stderr, err := b.missingHeader(ctx, f.path, includes)
			if err != nil {
				return err
			}
			if header == "" {
				break
			}
			lib := b.libs.Resolve(header, b.imported, b.pl.Arch)
			if lib == nil {
				return b.missing(header, f.path, stderr)
			}
			others := []string{}
			for _, c := range b.libs.Providers(header) {
				if c != lib {
					others = append(others, c.Name)
				}
			}
			b.imported = append(b.imported, lib)
			b.used = append(b.used, UsedLibrary{Name: lib.Name, Dir: lib.Dir, Header: header, Others: others})
			if len(others) > 0 {
				b.logf("kiln: %s: several libraries provide %s: using %s (not %s)\n", f.path, header, lib.Name, strings.Join(others, ", "))
			}
			b.includes = append(b.includes, lib.SrcDir)
			for _, sd := range lib.sourceDirs() {
				for _, p := range findSources(sd.Dir, sd.Recurse) {
					push(srcFile{path: p, lib: lib})
				}
			}
		}
	}
	return nil
}

// missingHeader preprocesses src and returns the first header it misses
// ("" if none), from the cache when the same run was made before.
func (b *builder) missingHeader(ctx context.Context, src string, includes []string) (string, string, error) {
	key := b.cacheKey("pp", src, strings.Join(includes, "\x00"))
	if key != "" {
		if data, err := os.ReadFile(key); err == nil {
			return strings.TrimSuffix(string(data), "\n"), "", nil
		}
	}
	stderr, err := b.preprocess(ctx, src, os.DevNull, includes)
	if err != nil && ctx.Err() != nil {
		return "", "", ctx.Err()
	}
	header := ""
	if m := includeRE.FindStringSubmatch(stderr); m != nil {
		header = strings.TrimSpace(m[1])
	} else {
		header = includeForOldCompilers(stderr)
	}
	if key != "" && (header != "" || err == nil) {
		putCache(key, []byte(header+"\n"))
	}
	return header, stderr, nil
}

// cacheKey is the cache file for a command on src: keyed by the inputs,
// the parts given and, for the sketch's own files, the sketch's content.
// "" when there is no cache.
func (b *builder) cacheKey(kind, src string, parts ...string) string {
	if b.job.Cache == "" || b.job.Inputs == "" {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "kiln-arduino-cache/1\x00%s\x00%s\x00%s", kind, b.job.Inputs, src)
	for _, p := range parts {
		fmt.Fprintf(h, "\x00%d:%s", len(p), p)
	}
	if strings.HasPrefix(src, b.job.BuildPath+"/") || strings.HasPrefix(src, b.job.Sketch+"/") {
		fmt.Fprintf(h, "\x00sketch:%s", b.sketchHash)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return filepath.Join(b.job.Cache, sum[:2], kind+"-"+sum)
}

// putCache writes a cache file atomically; a failure only costs time.
func putCache(name string, data []byte) {
	if os.MkdirAll(filepath.Dir(name), 0o755) != nil {
		return
	}
	tmp := fmt.Sprintf("%s.%d.tmp", name, os.Getpid())
	if os.WriteFile(tmp, data, 0o644) != nil || os.Rename(tmp, name) != nil {
		os.Remove(tmp)
	}
}

// MissingError is ErrMissingLibrary with its detail.
type MissingError struct {
	Header, File, Output string
	// Candidates are libraries that provide the header but could not be
	// used (another architecture), if any.
	Candidates []string
}

func (e *MissingError) Error() string {
	msg := fmt.Sprintf("%s: %s: no library provides %s", ErrMissingLibrary.Error(), e.File, e.Header)
	if len(e.Candidates) > 0 {
		msg += " (" + strings.Join(e.Candidates, ", ") + " do, but are already in use)"
	}
	return msg
}

func (e *MissingError) Unwrap() error { return ErrMissingLibrary }

func (b *builder) missing(header, file, stderr string) error {
	e := &MissingError{Header: header, File: file, Output: stderr}
	for _, l := range b.libs.Providers(header) {
		e.Candidates = append(e.Candidates, l.Name)
	}
	b.logf("%s", stderr)
	return e
}

func includeForOldCompilers(src string) string {
	for _, line := range strings.Split(src, "\n") {
		parts := strings.Split(line, ":")
		for i := range parts {
			if strings.Contains(parts[i], "fatal error") && i+1 < len(parts) {
				return strings.TrimSpace(parts[i+1])
			}
		}
	}
	return ""
}

// findSources lists .c/.cpp/.S files (case-insensitive, as arduino-builder's
// discovery does) in dir, sorted, recursively if asked.
func findSources(dir string, recurse bool) []string {
	var out []string
	_ = walkSorted(dir, func(p string, d os.DirEntry) error {
		if d.IsDir() {
			if !recurse {
				return errSkip
			}
			return nil
		}
		if sourceExts[strings.ToLower(filepath.Ext(p))] {
			out = append(out, p)
		}
		return nil
	})
	return out
}

var errSkip = errors.New("skip")

// preprocess runs recipe.preproc.macros on src, writing to target, and
// returns gcc's standard error.
func (b *builder) preprocess(ctx context.Context, src, target string, includes []string) (string, error) {
	p := b.props.Clone()
	p["source_file"] = src
	p["preprocessed_file_path"] = target
	p["includes"] = joinIncludes(includes)
	p["compiler.cpp.flags"] = strings.ReplaceAll(p["compiler.cpp.flags"], "-MMD", "")
	pattern := p["recipe.preproc.macros"]
	if pattern == "" {
		pattern = strings.Replace(p["recipe.cpp.o.pattern"], "{compiler.cpp.flags}", "{compiler.cpp.flags} {preproc.macros.flags}", 1)
		pattern = strings.Replace(pattern, "{object_file}", "{preprocessed_file_path}", 1)
	}
	argv, err := SplitCommand(deleteUnexpanded(p.Expand(pattern)))
	if err != nil {
		return "", err
	}
	_, stderr, err := b.exec(ctx, argv, false)
	return string(stderr), err
}

func joinIncludes(dirs []string) string {
	parts := make([]string, len(dirs))
	for i, d := range dirs {
		parts[i] = `"-I` + d + `"`
	}
	return strings.Join(parts, " ")
}

// exec runs one command; logged says whether its command line and output
// go to the build log (compiles and the link do; discovery runs do not).
func (b *builder) exec(ctx context.Context, argv []string, logged bool) ([]byte, []byte, error) {
	if len(argv) == 0 {
		return nil, nil, fmt.Errorf("arduino: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = b.env
	cmd.Dir = b.job.BuildPath
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if logged {
		b.mu.Lock()
		b.log.WriteString(commandLine(argv) + "\n")
		b.log.Write(out.Bytes())
		b.log.Write(errb.Bytes())
		b.mu.Unlock()
	}
	return out.Bytes(), errb.Bytes(), err
}

func commandLine(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'\\$") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`).Replace(a) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

// prototypes adds the sketch's function prototypes (ctags on the
// preprocessed sketch, arduino-builder's ContainerAddPrototypes) and writes
// the final <Main>.ino.cpp.
func (b *builder) prototypes(ctx context.Context, mergedPath, merged string, lineOffset int) error {
	target := filepath.Join(b.job.BuildPath, "preproc", "ctags_target_for_gcc_minus_e.cpp")
	if stderr, err := b.preprocess(ctx, mergedPath, target, b.includes); err != nil {
		b.logf("%s", stderr)
		return &CompileError{What: "preprocess " + filepath.Base(mergedPath), Output: stderr, Err: err}
	}
	pre, err := os.ReadFile(target)
	if err != nil {
		return fmt.Errorf("arduino: %w", err)
	}
	filtered := b.sk.filterSketchSource(string(pre))
	if err := os.WriteFile(target, []byte(filtered), 0o644); err != nil {
		return fmt.Errorf("arduino: %w", err)
	}
	p := b.props.Clone()
	p.Merge(p.SubTree("tools.ctags"))
	p["source_file"] = target
	pattern := p["pattern"]
	if pattern == "" {
		pattern = `"{cmd.path}" -u --language-force=c++ -f - --c++-kinds=svpf --fields=KSTtzns --line-directives "{source_file}"`
	}
	p["cmd.path"] = b.job.Ctags
	argv, err := SplitCommand(p.Expand(pattern))
	if err != nil {
		return err
	}
	out, stderr, err := b.exec(ctx, argv, false)
	if err != nil {
		return &CompileError{What: "ctags", Output: string(stderr), Err: err}
	}
	protos, line := parseCtags(string(out))
	if line == -1 {
		line = 0
	}
	final := addPrototypes(merged, lineOffset, protos, line)
	if err := os.WriteFile(mergedPath, []byte(final), 0o644); err != nil {
		return fmt.Errorf("arduino: %w", err)
	}
	return nil
}

// CompileError is a failed tool run with its full output.
type CompileError struct {
	What   string
	Output string
	Err    error
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("%s: %s: %v", ErrCompile.Error(), e.What, e.Err)
}

func (e *CompileError) Unwrap() error { return ErrCompile }

// compile is one compile of the build.
type compile struct {
	src, obj string
	recipe   string
	includes []string
}

// compileFiles lists the compiles of the files in dir in arduino-builder's
// order: .S, then .c, then .cpp (case-sensitive extensions), each sorted,
// recursively per extension when recurse is set.
func compileFiles(dir, buildDir string, recurse bool, includes []string) []compile {
	var out []compile
	for _, ext := range []struct{ ext, recipe string }{{".S", "recipe.S.o.pattern"}, {".c", "recipe.c.o.pattern"}, {".cpp", "recipe.cpp.o.pattern"}} {
		for _, src := range filesWithExt(dir, ext.ext, recurse) {
			rel, _ := filepath.Rel(dir, src)
			out = append(out, compile{src: src, obj: filepath.Join(buildDir, rel+".o"), recipe: ext.recipe, includes: includes})
		}
	}
	return out
}

// compileFilesRecursive is arduino-builder's CompileFilesRecursive: the
// directory's own files, then each subdirectory in turn.
func compileFilesRecursive(dir, buildDir string, includes []string) []compile {
	out := compileFiles(dir, buildDir, false, includes)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if isDirEntry(dir, e) {
			out = append(out, compileFilesRecursive(filepath.Join(dir, e.Name()), filepath.Join(buildDir, e.Name()), includes)...)
		}
	}
	return out
}

func isDirEntry(dir string, e os.DirEntry) bool {
	if e.Type()&os.ModeSymlink != 0 {
		return dirExists(filepath.Join(dir, e.Name()))
	}
	return e.IsDir()
}

func filesWithExt(dir, ext string, recurse bool) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !isDirEntry(dir, e) && filepath.Ext(e.Name()) == ext {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	if recurse {
		for _, e := range ents {
			if isDirEntry(dir, e) {
				out = append(out, filesWithExt(filepath.Join(dir, e.Name()), ext, true)...)
			}
		}
	}
	return out
}

func (b *builder) compileAndLink(ctx context.Context) error {
	bp := b.job.BuildPath
	var sketch, libs, variant, core []compile
	sketch = compileFiles(b.sketchBuild, b.sketchBuild, false, b.includes)
	if dirExists(filepath.Join(b.sketchBuild, "src")) {
		src := filepath.Join(b.sketchBuild, "src")
		sketch = append(sketch, compileFiles(src, src, true, b.includes)...)
	}
	type archive struct {
		file string
		objs []compile
	}
	var libArchives = map[*Library]*archive{}
	var libOrder []any // compile groups and archives in link order
	for _, l := range b.imported {
		out := filepath.Join(bp, "libraries", l.Name)
		var cs []compile
		if l.Recursive {
			cs = compileFilesRecursive(l.SrcDir, out, b.includes)
			if l.DotALinkage {
				libArchives[l] = &archive{file: filepath.Join(out, l.Name+".a"), objs: cs}
			}
		} else {
			inc := b.includes
			if l.UtilityDir != "" {
				inc = append(append([]string(nil), inc...), l.UtilityDir)
			}
			cs = compileFiles(l.SrcDir, out, false, inc)
			if l.UtilityDir != "" {
				cs = append(cs, compileFiles(l.UtilityDir, filepath.Join(out, "utility"), false, inc)...)
			}
		}
		libs = append(libs, cs...)
		libOrder = append(libOrder, l)
	}
	coreInc := []string{b.props["build.core.path"]}
	if v := b.props["build.variant.path"]; v != "" {
		coreInc = append(coreInc, v)
		variant = compileFiles(v, filepath.Join(bp, "core"), true, coreInc)
	}
	core = compileFiles(b.props["build.core.path"], filepath.Join(bp, "core"), true, coreInc)

	all := append(append(append(append([]compile(nil), sketch...), libs...), variant...), core...)
	if err := b.compileAll(ctx, all); err != nil {
		return err
	}
	// Archives: each library with dot_a_linkage, then core.a, one
	// recipe.ar.pattern run per object as arduino-builder does.
	for _, l := range b.imported {
		if a := libArchives[l]; a != nil {
			if err := b.archive(ctx, a.file, a.objs); err != nil {
				return err
			}
		}
	}
	coreA := filepath.Join(bp, "core", "core.a")
	if err := b.archive(ctx, coreA, core); err != nil {
		return err
	}
	var objs []string
	for _, c := range sketch {
		objs = append(objs, c.obj)
	}
	for _, l := range b.imported {
		if a := libArchives[l]; a != nil {
			objs = append(objs, a.file)
			continue
		}
		for _, c := range libs {
			if strings.HasPrefix(c.obj, filepath.Join(bp, "libraries", l.Name)+"/") {
				objs = append(objs, c.obj)
			}
		}
	}
	for _, c := range variant {
		objs = append(objs, c.obj)
	}
	p := b.props.Clone()
	if p["build.mcu"] == "atmega2560" {
		// arduino-builder's addRelaxTrickIfATMEGA2560: not in any
		// platform file, hard-coded in the builder (and IDE 1.8).
		p["compiler.c.elf.flags"] += ",--relax"
	}
	quoted := make([]string, len(objs))
	for i, o := range objs {
		quoted[i] = `"` + o + `"`
	}
	p["object_files"] = strings.Join(quoted, " ")
	p["archive_file"] = "core/core.a"
	p["archive_file_path"] = coreA
	argv, err := SplitCommand(p.Expand(p["recipe.c.combine.pattern"]))
	if err != nil {
		return err
	}
	// The one flag arduino-builder does not pass: an LTO link compiles into
	// temporary files named at random, and the name lands in the ELF's
	// debug information; -save-temps names them after the output (the
	// flash image is the same either way — the corpus test compares it).
	argv = append(argv, "-save-temps")
	if _, stderr, err := b.exec(ctx, argv, true); err != nil {
		return &CompileError{What: "link " + p["build.project_name"] + ".elf", Output: string(stderr), Err: err}
	}
	elf := filepath.Join(bp, p["build.project_name"]+".elf")
	data, err := os.ReadFile(elf)
	if err != nil {
		return fmt.Errorf("arduino: link gave no ELF: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(b.job.ELF), 0o755); err != nil {
		return fmt.Errorf("arduino: %w", err)
	}
	return os.WriteFile(b.job.ELF, data, 0o644)
}

func (b *builder) archive(ctx context.Context, file string, objs []compile) error {
	for _, o := range objs {
		p := b.props.Clone()
		p["archive_file"] = filepath.Base(file)
		p["archive_file_path"] = file
		p["object_file"] = o.obj
		argv, err := SplitCommand(p.Expand(p["recipe.ar.pattern"]))
		if err != nil {
			return err
		}
		if _, stderr, err := b.exec(ctx, argv, true); err != nil {
			return &CompileError{What: "archive " + filepath.Base(file), Output: string(stderr), Err: err}
		}
	}
	return nil
}

// compileAll runs the compiles, Jobs at a time; on failure it returns
// every failed compile's output (in build order).
func (b *builder) compileAll(ctx context.Context, cs []compile) error {
	jobs := b.job.Jobs
	if jobs < 1 {
		jobs = 1
	}
	type result struct {
		cmd, out []byte
		err      error
	}
	res := make([]result, len(cs))
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < jobs; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				res[i].cmd, res[i].out, res[i].err = b.compileOne(ctx, cs[i])
			}
		}()
	}
	for i := range cs {
		work <- i
	}
	close(work)
	wg.Wait()
	var failed []string
	var first error
	for i, r := range res {
		b.log.Write(r.cmd)
		b.log.Write(r.out)
		if r.err != nil {
			failed = append(failed, string(r.out))
			if first == nil {
				first = &CompileError{What: "compile " + b.sourceName(cs[i].src), Err: r.err}
			}
		}
	}
	if first != nil {
		ce := first.(*CompileError)
		ce.Output = strings.Join(failed, "")
		return ce
	}
	return nil
}

// sourceName names a compiled file for messages: a sketch file by its
// path in the sketch (the merged .ino.cpp by the main .ino).
func (b *builder) sourceName(src string) string {
	rel, err := filepath.Rel(b.sketchBuild, src)
	if err != nil || strings.HasPrefix(rel, "..") {
		return src
	}
	if rel == filepath.Base(b.sk.Main.Path)+".cpp" {
		return b.sk.Main.Path
	}
	return filepath.Join(b.sk.Dir, rel)
}

// compileOne runs one compile and returns its command line (for the log)
// and output.
func (b *builder) compileOne(ctx context.Context, c compile) ([]byte, []byte, error) {
	p := b.props.Clone()
	p["includes"] = joinIncludes(c.includes)
	p["source_file"] = c.src
	p["object_file"] = c.obj
	argv, err := SplitCommand(p.Expand(p[c.recipe]))
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(c.obj), 0o755); err != nil {
		return nil, nil, err
	}
	cmdline := []byte(commandLine(argv) + "\n")
	key := b.cacheKey("obj", c.src, argv...)
	if key != "" {
		if data, err := os.ReadFile(key); err == nil {
			return cmdline, nil, os.WriteFile(c.obj, data, 0o644)
		}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = b.env
	cmd.Dir = b.job.BuildPath
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if err == nil && key != "" {
		if data, rerr := os.ReadFile(c.obj); rerr == nil {
			putCache(key, data)
		}
	}
	return cmdline, out.Bytes(), err
}

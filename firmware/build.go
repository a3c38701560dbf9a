package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/beneath"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// Sentinel errors of Build.
var (
	// ErrTooBig: the program does not fit the board's application flash.
	ErrTooBig = errors.New("program does not fit the board's flash")
	// ErrNotReproducible: --check built outputs that differ from the first build.
	ErrNotReproducible = errors.New("outputs are not reproducible")
)

// DefaultSourceDateEpoch is SOURCE_DATE_EPOCH for every build
// (1980-01-01T00:00:00Z, the earliest time a FAT or ZIP file can hold).
const DefaultSourceDateEpoch = 315532800

// Fixed paths inside the sandbox: a build's outputs do not depend on where
// the checkout or the store is.
const (
	sandboxToolchain = "/toolchain"
	sandboxInputs    = "/inputs"
	sandboxBuild     = "/build"
	objDir           = ".obj"
	outDir           = ".out"
)

// Options says what to build and how.
type Options struct {
	// Dir is the recipe directory.
	Dir string
	// Store is where derivations are kept; required.
	Store *store.Store
	// Fetcher gets the toolchain and inputs; nil means one on Store with the
	// default HTTP client.
	Fetcher *fetch.Fetcher
	// Out, if set, is the directory the outputs are copied to.
	Out string
	// Check builds again in a fresh sandbox, ignoring the store, and fails
	// with ErrNotReproducible unless every output is bit-identical.
	Check bool
	// NoSandbox builds on the host when namespaces are not allowed. The
	// manifest records it.
	NoSandbox bool
	// Jobs is the number of parallel compiles; 0 means one per CPU.
	Jobs int
	// NoCache keeps an arduino build from reusing objects compiled by
	// earlier builds (the store's content-keyed object cache).
	NoCache bool
	// Log, if set, gets one line per step.
	Log func(format string, a ...any)
	// Substitute, if set, is asked for the derivation's entry when the
	// store lacks it, before anything is fetched or built: a binary cache
	// (internal/cache) that returns the entry's path and true.
	Substitute func(ctx context.Context, key, name string) (string, bool)
}

// Timings are the wall-clock durations of a build's steps.
type Timings struct {
	Hash  time.Duration `json:"hash"`
	Fetch time.Duration `json:"fetch"`
	Build time.Duration `json:"build"`
	Check time.Duration `json:"check"`
	Total time.Duration `json:"total"`
}

// Result is what Build did.
type Result struct {
	Name       string `json:"name"`
	Derivation string `json:"derivation"`
	// StorePath is the store entry holding the outputs and manifest.json.
	StorePath string `json:"store_path"`
	// Out is where the outputs were copied ("" if nowhere).
	Out string `json:"out,omitempty"`
	// Hit is true when the store already held the derivation and no
	// compiler ran.
	Hit bool `json:"hit"`
	// Substituted is true when the entry came from a binary cache (Hit is
	// true as well: no compiler ran).
	Substituted bool `json:"substituted,omitempty"`
	// Checked is true when a second build confirmed every output.
	Checked  bool      `json:"checked"`
	Manifest *Manifest `json:"manifest"`
	Timings  Timings   `json:"timings"`
}

// outputNames are the files a firmware store entry may hold, manifest
// last; firmware.dfu only for DfuSe boards.
var outputNames = []string{ELFName, HEXName, BINName, DFUName, BuildLogName, ManifestName}

// Build builds the recipe in opts.Dir, or finds it in the store.
func Build(ctx context.Context, opts Options) (*Result, error) {
	start := time.Now()
	if opts.Store == nil {
		return nil, errors.New("firmware: build: no store")
	}
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	r, err := recipes.Load(opts.Dir)
	if err != nil {
		return nil, err
	}
	if r.Kind != recipes.KindFirmware && r.Kind != recipes.KindArduino {
		return nil, fmt.Errorf("%s: kind %q is not firmware", r.File, r.Kind)
	}
	d, err := r.Derive()
	if err != nil {
		return nil, err
	}
	res := &Result{Name: r.Name, Derivation: d.Hash()}
	res.Timings.Hash = time.Since(start)
	s := opts.Store

	var m *Manifest
	rz, err := s.Realise(ctx, store.Request{
		Hash: StoreKey(res.Derivation, !opts.NoSandbox), Name: r.Name,
		Build: func(ctx context.Context, dir string) error {
			b, err := prepare(ctx, opts, d, logf)
			if err != nil {
				return err
			}
			res.Timings.Fetch = time.Since(start) - res.Timings.Hash
			t := time.Now()
			var files map[string][]byte
			if files, m, err = b.run(ctx); err != nil {
				return err
			}
			res.Timings.Build = time.Since(t)
			for _, name := range outputNames {
				if _, ok := files[name]; !ok {
					continue
				}
				if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o444); err != nil {
					return err
				}
			}
			return nil
		},
		Check: func(dir string, entry *store.Manifest) error {
			var err error
			m, err = checkEntry(dir, entry, res.Derivation, !opts.NoSandbox)
			return err
		},
		Substitute: opts.Substitute,
		Log:        logf,
	})
	if err != nil {
		return nil, fmt.Errorf("firmware: %s: %w", r.Name, err)
	}
	res.Hit, res.StorePath, res.Manifest = rz.How != store.Built, rz.Path, m
	res.Substituted = rz.How == store.Substituted

	if opts.Check {
		t := time.Now()
		if err := check(ctx, opts, d, res.StorePath, logf); err != nil {
			return nil, err
		}
		res.Checked = true
		res.Timings.Check = time.Since(t)
	}
	if opts.Out != "" {
		if err := copyOutputs(res.StorePath, opts.Out); err != nil {
			return nil, err
		}
		res.Out = opts.Out
	}
	res.Timings.Total = time.Since(start)
	return res, nil
}

// check builds d again from scratch and compares every output with the
// store entry at stored.
func check(ctx context.Context, opts Options, d *recipes.Derivation, stored string, logf func(string, ...any)) error {
	opts.NoCache = true // from scratch: no object of an earlier build
	b, err := prepare(ctx, opts, d, logf)
	if err != nil {
		return err
	}
	files, _, err := b.run(ctx)
	if err != nil {
		return fmt.Errorf("firmware: check %s: %w", d.Name, err)
	}
	var differ []string
	n := 0
	for _, name := range outputNames {
		old, err := os.ReadFile(filepath.Join(stored, name))
		_, rebuilt := files[name]
		if errors.Is(err, fs.ErrNotExist) && !rebuilt {
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("firmware: check %s: %w", d.Name, err)
		}
		n++
		if !bytes.Equal(old, files[name]) || (err == nil) != rebuilt {
			differ = append(differ, fmt.Sprintf("%s (%s, rebuilt %s)", name, short(sha256Hex(old)), short(sha256Hex(files[name]))))
		}
	}
	if len(differ) > 0 {
		return fmt.Errorf("firmware: check %s: %w: %s differ", d.Name, ErrNotReproducible, strings.Join(differ, ", "))
	}
	logf("check: %d outputs bit-identical", n)
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// copyOutputs copies a store entry's files to out (store.Publish: never
// writing through a name already in out).
func copyOutputs(from, out string) error {
	var files []store.File
	for _, name := range outputNames {
		src := filepath.Join(from, name)
		if _, err := os.Lstat(src); (name == DFUName || name == BuildLogName) && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		files = append(files, store.File{Name: name, From: src})
	}
	if err := store.Publish(out, files); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	return nil
}

// builder is one build of a derivation, ready to run.
type builder struct {
	opts   Options
	d      *recipes.Derivation
	r      *recipes.Recipe
	board  *boards.Board
	tc     *recipes.Toolchain
	tcPath string            // toolchain tree in the store
	inputs map[string]string // input name → its root in the store (subdir resolved)
	// inputRoots are the inputs' store entries and subdirs
	// (entry, subdir), which the mount stays beneath.
	inputRoots map[string][2]string
	impure     []Impurity
	sandboxed  bool
	// arduinoMap maps an arduino build's sandbox paths back to the host's;
	// libMap holds the library pairs for it.
	arduinoMap *strings.Replacer
	libMap     []string
}

// prepare fetches (or finds) the toolchain and inputs, verifies their store
// entries and works out the host files the toolchain needs.
func prepare(ctx context.Context, opts Options, d *recipes.Derivation, logf func(string, ...any)) (*builder, error) {
	r := d.Recipe()
	b := &builder{opts: opts, d: d, r: r, board: d.Board, tc: d.ToolchainDef(), inputs: map[string]string{}, inputRoots: map[string][2]string{}, sandboxed: !opts.NoSandbox}
	if b.tc == nil {
		return nil, fmt.Errorf("%s: %w: no toolchain", r.File, recipes.ErrInvalid)
	}
	f := opts.Fetcher
	if f == nil {
		f = &fetch.Fetcher{Store: opts.Store}
	}
	var err error
	for _, in := range r.Inputs {
		p, err := f.Input(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.File, err)
		}
		if err := verifyEntry(opts.Store, p); err != nil {
			return nil, fmt.Errorf("firmware: input %s: %w", in.Name, err)
		}
		b.inputRoots[in.Name] = [2]string{p, path.Clean("./" + in.Subdir)}
		if in.Subdir != "" {
			if p, err = beneath.Resolve(p, in.Subdir); errors.Is(err, beneath.ErrEscapes) {
				return nil, fmt.Errorf("%s: input %s: subdir %q %w the input (a symlink): refused", r.File, in.Name, in.Subdir, beneath.ErrEscapes)
			} else if err != nil {
				return nil, fmt.Errorf("%s: input %s: subdir %q: %w", r.File, in.Name, in.Subdir, err)
			}
		}
		b.inputs[in.Name] = p
	}
	// The toolchain after the inputs: an input refused costs no toolchain download.
	if b.tcPath, err = f.Toolchain(ctx, b.tc); err != nil {
		return nil, fmt.Errorf("%s: %w", r.File, err)
	}
	t := time.Now()
	if err := verifyEntry(opts.Store, b.tcPath); err != nil {
		return nil, fmt.Errorf("firmware: toolchain %s: %w", b.tc.Name, err)
	}
	logf("verified toolchain %s in %s", b.tc.Name, time.Since(t).Round(time.Millisecond))
	// The host files the toolchain loads: mounted into the sandbox, and
	// named in the manifest either way.
	{
		t := time.Now()
		if b.impure, err = hostClosure(b.tcPath, b.tc.LibDirs); err != nil {
			return nil, err
		}
		logf("found %d host files the toolchain loads in %s", len(b.impure), time.Since(t).Round(time.Millisecond))
	}
	return b, nil
}

// paths maps the build's places to where the commands see them.
type paths struct {
	toolchain string
	input     func(name string) string
	build     string
}

func (b *builder) paths(hostBuild string) paths {
	if b.sandboxed {
		return paths{
			toolchain: sandboxToolchain,
			input:     func(n string) string { return sandboxInputs + "/" + n },
			build:     sandboxBuild,
		}
	}
	return paths{toolchain: b.tcPath, input: func(n string) string { return b.inputs[n] }, build: hostBuild}
}

// checkIn refuses an $in/<name>/<path> that resolves outside input name
// (a symlink in the input pointing out of it); other paths pass.
func (b *builder) checkIn(s string) error {
	name, rest, _ := strings.Cut(strings.TrimPrefix(s, "$in/"), "/")
	root, ok := b.inputs[name]
	if !strings.HasPrefix(s, "$in/") || !ok || rest == "" {
		return nil
	}
	if err := beneath.Check(root, rest); errors.Is(err, beneath.ErrEscapes) {
		return fmt.Errorf("%s: %s %w input %s (a symlink): refused", b.r.File, s, beneath.ErrEscapes, name)
	}
	return nil
}

// expand replaces $in/<name> and $src in a recipe path.
func (p paths) expand(s string) string {
	switch {
	case s == "$src":
		return p.build
	case strings.HasPrefix(s, "$src/"):
		return p.build + "/" + strings.TrimPrefix(s, "$src/")
	case strings.HasPrefix(s, "$in/"):
		name, rest, _ := strings.Cut(strings.TrimPrefix(s, "$in/"), "/")
		if rest == "" {
			return p.input(name)
		}
		return p.input(name) + "/" + rest
	}
	return s
}

// run builds once in a fresh directory and returns the output files (by
// name) and the manifest.
func (b *builder) run(ctx context.Context) (map[string][]byte, *Manifest, error) {
	tmp, err := os.MkdirTemp("", "kiln-build-")
	if err != nil {
		return nil, nil, fmt.Errorf("firmware: %w", err)
	}
	defer os.RemoveAll(tmp)
	hostBuild := filepath.Join(tmp, "build")
	for _, sf := range b.d.SourceFiles() {
		dst := filepath.Join(hostBuild, filepath.FromSlash(sf.Path))
		if err := b.copySource(sf, dst); err != nil {
			return nil, nil, err
		}
	}
	pl, err := b.plan(hostBuild)
	if err != nil {
		return nil, nil, err
	}
	if b.sandboxed {
		pl.Root = filepath.Join(tmp, "root")
		if err := os.Mkdir(pl.Root, 0o755); err != nil {
			return nil, nil, fmt.Errorf("firmware: %w", err)
		}
		t := time.Now()
		rep, err := runSandboxed(ctx, pl)
		if err != nil {
			return nil, nil, b.keepLog(hostBuild, b.wrapErr(err))
		}
		b.logStages(pl, rep, time.Since(t))
	} else {
		t := time.Now()
		rep := runPlan(ctx, pl)
		if !rep.OK {
			return nil, nil, b.keepLog(hostBuild, b.wrapErr(rep.err()))
		}
		b.logStages(pl, &rep, time.Since(t))
	}
	elfData, err := os.ReadFile(filepath.Join(hostBuild, outDir, ELFName))
	if err != nil {
		return nil, nil, fmt.Errorf("firmware: %s: link gave no ELF: %w", b.r.Name, err)
	}
	imgs, err := FromELF(ELFName, elfData)
	if err != nil {
		return nil, nil, err
	}
	if err := b.fits(imgs.Image); err != nil {
		return nil, nil, err
	}
	files := map[string][]byte{ELFName: elfData, HEXName: imgs.HEX, BINName: imgs.BIN}
	if log, err := os.ReadFile(filepath.Join(hostBuild, outDir, BuildLogName)); err == nil {
		files[BuildLogName] = log
	}
	if b.board.Supports("dfuse") {
		vid, pid := dfuIDs(b.board)
		files[DFUName] = flash.EncodeDfuSe(imgs.Image, vid, pid)
	}
	m := b.manifest(files, imgs)
	if files[ManifestName], err = m.Marshal(); err != nil {
		return nil, nil, err
	}
	return files, m, nil
}

// logStages says how long each stage of the plan took.
func (b *builder) logStages(pl *plan, rep *report, total time.Duration) {
	if b.opts.Log == nil {
		return
	}
	var parts []string
	var sum time.Duration
	for i, d := range rep.Stages {
		what := pl.Stages[i][0].What
		if n := len(pl.Stages[i]); n > 1 {
			what = fmt.Sprintf("%d compiles", n)
		}
		parts = append(parts, fmt.Sprintf("%s %s", what, d.Round(time.Millisecond)))
		sum += d
	}
	b.opts.Log("ran %s; sandbox set-up and tear-down %s", strings.Join(parts, ", "), (total - sum).Round(time.Millisecond))
}

// ldOverflow is how GNU ld reports a program too big for a memory region
// (older versions say only that a section "will not fit").
var ldOverflow = regexp.MustCompile("(?:region `([^']+)' overflowed by ([0-9]+) bytes|will not fit in region `([^']+)')")

// keepLog copies a failed build's build.log (paths mapped to the host's)
// to the output directory and names it in the error.
func (b *builder) keepLog(hostBuild string, err error) error {
	var ce *CommandError
	data, rerr := os.ReadFile(filepath.Join(hostBuild, outDir, BuildLogName))
	if rerr != nil || b.opts.Out == "" || !errors.As(err, &ce) {
		return err
	}
	if b.arduinoMap != nil {
		data = []byte(b.arduinoMap.Replace(string(data)))
	}
	if os.MkdirAll(b.opts.Out, 0o755) == nil {
		p := filepath.Join(b.opts.Out, BuildLogName)
		if os.WriteFile(p, data, 0o644) == nil {
			ce.Log = p
		}
	}
	return err
}

func (b *builder) wrapErr(err error) error {
	var ce *CommandError
	if !errors.As(err, &ce) {
		return err
	}
	if b.arduinoMap != nil {
		ce.Output = b.arduinoMap.Replace(ce.Output)
		ce.Err = b.arduinoMap.Replace(ce.Err)
	}
	if m := ldOverflow.FindStringSubmatch(ce.Output); m != nil && strings.HasPrefix(ce.What, "link") {
		region, by := m[1]+m[3], ""
		if m[2] != "" {
			by = " by " + m[2] + " bytes"
		}
		if r := strings.ToLower(region); r == "text" || strings.Contains(r, "flash") || strings.Contains(r, "rom") {
			return fmt.Errorf("%s: %w: the linker's %s region overflowed%s (%s has %d bytes of application flash)",
				b.r.File, ErrTooBig, region, by, b.board.Name, b.board.Flash.Size)
		}
	}
	return fmt.Errorf("%s: %w", b.r.File, err)
}

// fits checks the image against the board: it must fit the application
// flash and stay clear of the bootloader.
func (b *builder) fits(img *flash.Image) error {
	fl := b.board.Flash
	ext := img.Extent()
	if uint64(ext.Addr)+uint64(ext.Size) > fl.End() && img.Size() > 0 {
		used := uint64(ext.Addr) + uint64(ext.Size) - uint64(fl.Base)
		return fmt.Errorf("%s: %w: the program needs %d bytes, %s has %d bytes of application flash",
			b.r.File, ErrTooBig, used, b.board.Name, fl.Size)
	}
	if err := img.Check(b.board); err != nil {
		return fmt.Errorf("%s: %w", b.r.File, err)
	}
	return nil
}

// archFlags are the compiler flags the board implies.
func (b *builder) archFlags() []string {
	switch b.board.Arch {
	case "avr":
		return []string{"-mmcu=" + b.board.MCU}
	case "cortex-m":
		f := []string{"-mcpu=" + b.board.CPU, "-mthumb"}
		if b.board.FPU != "" {
			f = append(f, "-mfpu="+b.board.FPU, "-mfloat-abi=hard")
		}
		return f
	}
	return nil
}

// plan turns the derivation into the commands of the build.
func (b *builder) plan(hostBuild string) (*plan, error) {
	p := b.paths(hostBuild)
	bld := b.r.Build
	var mounts []mount
	if b.sandboxed {
		mounts = append(mounts, mount{Root: b.tcPath, Source: ".", Target: sandboxToolchain}, mount{Source: hostBuild, Target: sandboxBuild, RW: true})
		names := make([]string, 0, len(b.inputs))
		for n := range b.inputs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			mounts = append(mounts, mount{Root: b.inputRoots[n][0], Source: b.inputRoots[n][1], Target: p.input(n)})
		}
		for _, im := range b.impure {
			mounts = append(mounts, mount{Source: im.Path, Target: im.Target})
		}
	}
	env := []string{
		"PATH=" + p.toolchain + "/" + b.tc.BinDir,
		"TZ=UTC", "LC_ALL=C", "HOME=/homeless",
		"SOURCE_DATE_EPOCH=" + strconv.FormatInt(DefaultSourceDateEpoch, 10),
	}
	var libPath []string
	for _, l := range b.tc.LibDirs {
		libPath = append(libPath, p.toolchain+"/"+l)
	}
	if b.sandboxed {
		libPath = append(libPath, hostLibDir)
		env = append(env, "TMPDIR=/tmp")
	} else {
		env = append(env, "TMPDIR="+filepath.Join(filepath.Dir(hostBuild), "tmp"))
		if err := os.MkdirAll(filepath.Join(filepath.Dir(hostBuild), "tmp"), 0o700); err != nil {
			return nil, err
		}
	}
	if len(libPath) > 0 {
		env = append(env, "LD_LIBRARY_PATH="+strings.Join(libPath, ":"))
	}

	if b.r.Kind == recipes.KindArduino {
		cmds, more, err := b.planArduino(hostBuild, p)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, more...)
		return &plan{Mounts: mounts, Env: env, Dir: p.build, Jobs: 1, Stages: [][]command{cmds}}, nil
	}
	common := b.archFlags()
	var defs []string
	keys := make([]string, 0, len(bld.Defines))
	for k := range bld.Defines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := bld.Defines[k]; v != "" {
			defs = append(defs, "-D"+k+"="+v)
		} else {
			defs = append(defs, "-D"+k)
		}
	}
	for _, inc := range bld.Includes {
		if err := b.checkIn(inc); err != nil {
			return nil, err
		}
		defs = append(defs, "-I"+p.expand(inc))
	}
	var prefixMaps []string
	if !b.sandboxed {
		// Outside the sandbox the paths differ from build to build; map
		// them to the sandbox's so debug information does not record them.
		prefixMaps = append(prefixMaps, "-fdebug-prefix-map="+hostBuild+"="+sandboxBuild,
			"-fdebug-prefix-map="+b.tcPath+"="+sandboxToolchain)
		names := make([]string, 0, len(b.inputs))
		for n := range b.inputs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			prefixMaps = append(prefixMaps, "-fdebug-prefix-map="+b.inputs[n]+"="+sandboxInputs+"/"+n)
		}
		defs = append(defs, prefixMaps...)
	}
	tool := func(name string) string { return b.tc.Prefix + name }

	cxx := false
	var objs, coreObjs []string
	var compiles []command
	addCompile := func(src, rel, obj string) error {
		ext := strings.ToLower(path.Ext(src))
		var argv []string
		switch {
		case ext == ".c":
			argv = append(append([]string{tool("gcc")}, common...), bld.CFlags...)
		case ext == ".cpp" || ext == ".cc" || ext == ".cxx":
			argv = append(append([]string{tool("g++")}, common...), bld.CXXFlags...)
			cxx = true
		case path.Ext(src) == ".S" || ext == ".s":
			argv = append(append([]string{tool("gcc")}, common...), bld.ASFlags...)
		default:
			return nil // headers and other files are not compiled
		}
		if err := os.MkdirAll(filepath.Join(hostBuild, filepath.FromSlash(path.Dir(obj))), 0o755); err != nil {
			return err
		}
		argv = append(argv, defs...)
		argv = append(argv, "-frandom-seed="+rel, "-c", src, "-o", obj)
		compiles = append(compiles, command{Argv: argv, What: "compile " + rel})
		return nil
	}
	for _, sf := range b.d.SourceFiles() {
		if !sf.Compile {
			continue
		}
		obj := objDir + "/" + sf.Path + ".o"
		n := len(compiles)
		if err := addCompile(sf.Path, sf.Path, obj); err != nil {
			return nil, err
		}
		if len(compiles) > n {
			objs = append(objs, obj)
		}
	}
	for _, g := range bld.CoreSources {
		name, rest, _ := strings.Cut(strings.TrimPrefix(g, "$in/"), "/")
		root := b.inputs[name]
		matches, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(rest)))
		if err != nil {
			return nil, fmt.Errorf("%s: core source %q: %w", b.r.File, g, err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("%s: core source %q %w", b.r.File, g, recipes.ErrNoMatch)
		}
		sort.Strings(matches)
		for _, m := range matches {
			relIn, err := filepath.Rel(root, m)
			if err != nil {
				return nil, err
			}
			relIn = filepath.ToSlash(relIn)
			rel := "$in/" + name + "/" + relIn
			if err := b.checkIn(rel); err != nil {
				return nil, err
			}
			obj := objDir + "/core/" + name + "/" + relIn + ".o"
			n := len(compiles)
			if err := addCompile(p.input(name)+"/"+relIn, rel, obj); err != nil {
				return nil, err
			}
			if len(compiles) > n {
				coreObjs = append(coreObjs, obj)
			}
		}
	}
	if len(compiles) == 0 {
		return nil, fmt.Errorf("%s: %w: no C, C++ or assembler source to compile", b.r.File, recipes.ErrNoMatch)
	}
	if err := os.MkdirAll(filepath.Join(hostBuild, outDir), 0o755); err != nil {
		return nil, err
	}

	var stages [][]command
	for i, argv := range bld.Pre {
		if err := b.checkIn(argv[0]); err != nil {
			return nil, err
		}
		cmd := append([]string{p.expand(argv[0])}, argv[1:]...)
		stages = append(stages, []command{{Argv: cmd, What: fmt.Sprintf("pre command %d (%s)", i+1, argv[0])}})
	}
	stages = append(stages, compiles)
	link := []string{tool("gcc")}
	if cxx {
		link[0] = tool("g++")
	}
	link = append(link, common...)
	link = append(link, bld.LDFlags...)
	link = append(link, prefixMaps...) // an LTO link compiles too
	for _, f := range bld.LDFlags {
		if strings.HasPrefix(f, "-flto") {
			// The LTO link compiles into temporary files named at random,
			// and the name lands in the debug information; -save-temps
			// names them after the output instead (firmware.elf.ltrans0.o).
			link = append(link, "-save-temps")
			break
		}
	}
	if bld.LinkerScript != "" {
		if err := b.checkIn(bld.LinkerScript); err != nil {
			return nil, err
		}
		link = append(link, "-T", p.expand(bld.LinkerScript))
	}
	link = append(link, "-o", outDir+"/"+ELFName)
	link = append(link, objs...)
	if len(coreObjs) > 0 {
		archive := objDir + "/core.a"
		// gcc-ar is ar with the compiler's LTO plugin, so LTO objects get a
		// symbol index; D zeroes the members' times, uids and modes.
		stages = append(stages, []command{{Argv: append([]string{tool("gcc-ar"), "rcsD", archive}, coreObjs...), What: "archive core.a"}})
		link = append(link, archive)
	}
	for _, l := range bld.Libs {
		link = append(link, "-l"+l)
	}
	stages = append(stages, []command{{Argv: link, What: "link " + ELFName}})

	return &plan{Mounts: mounts, Env: env, Dir: p.build, Jobs: b.jobs(), Stages: stages}, nil
}

// manifest describes this build's outputs.
func (b *builder) manifest(files map[string][]byte, imgs *Images) *Manifest {
	m := &Manifest{
		Format: ManifestFormat, Builder: Builder, BuilderDigest: b.d.BuilderDigest,
		Name: b.r.Name, Version: b.r.Version, Board: b.board.Name, Derivation: b.d.Hash(),
		Outputs:     map[string]Output{},
		LoadAddress: imgs.Load, ImageSHA256: imgs.Image.SHA256(), ImageSize: imgs.Image.Size(), FlashSize: b.board.Flash.Size,
		Toolchain:       ToolchainRef{Name: b.tc.Name},
		Inputs:          []InputRef{},
		Sources:         []FileRef{},
		HostImpurities:  b.impure,
		Sandbox:         b.sandboxed,
		SourceDateEpoch: DefaultSourceDateEpoch,
	}
	if m.HostImpurities == nil {
		m.HostImpurities = []Impurity{}
	}
	for name, data := range files {
		m.Outputs[name] = Output{SHA256: sha256Hex(data), Size: int64(len(data))}
	}
	for _, pk := range b.tc.Packages {
		src := ""
		if len(pk.Sources) > 0 {
			src = pk.Sources[0]
		}
		m.Toolchain.Packages = append(m.Toolchain.Packages, PackageRef{Name: pk.Name, Source: src, SHA256: pk.SHA256, Linked: pk.Linked})
	}
	for _, in := range b.r.Inputs {
		m.Inputs = append(m.Inputs, InputRef{Name: in.Name, SHA256: in.SHA256, Sources: in.Sources})
	}
	sort.Slice(m.Inputs, func(i, j int) bool { return m.Inputs[i].Name < m.Inputs[j].Name })
	for _, sf := range b.d.SourceFiles() {
		m.Sources = append(m.Sources, FileRef{Path: sf.Path, SHA256: sf.SHA256})
	}
	if ad, ok := b.d.Extra.(*recipes.ArduinoDerivation); ok {
		for _, sf := range ad.Files { // an arduino recipe's sketch files
			m.Sources = append(m.Sources, FileRef{Path: path.Join(ad.Spec.Sketch, sf.Path), SHA256: sf.SHA256})
		}
	}
	return m
}

func numCPU() int { return runtime.NumCPU() }

// copySource copies a recipe file into the build tree, opened beneath
// the recipe directory (Recipe.OpenFile), and checks the bytes copied are
// the bytes the derivation hashed.
func (b *builder) copySource(sf recipes.SourceFile, dst string) error {
	in, err := b.r.OpenFile(sf.Path)
	if err != nil {
		return err
	}
	defer in.Close()
	return copyChecked(in, sf.Path, sf.SHA256, dst)
}

// copyBeneath copies root/rel (opened beneath root: beneath.Open) to dst
// and checks its sha256 is want.
func copyBeneath(root, rel, want, dst string) error {
	in, err := beneath.Open(root, rel, 0)
	if err != nil {
		return fmt.Errorf("firmware: %w (a symlink): refused", err)
	}
	defer in.Close()
	return copyChecked(in, rel, want, dst)
}

func copyChecked(in io.Reader, rel, want, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		out.Close()
		return fmt.Errorf("firmware: %s: %w", rel, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("firmware: %s changed since it was hashed (sha256 %s, derivation has %s)", rel, short(got), short(want))
	}
	return nil
}

package firmware

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"kiln.dev/kiln/firmware/arduino"
	"kiln.dev/kiln/recipes"
)

// Where an arduino build keeps things inside /build.
const (
	arduinoSketchDir = "src"            // the sketch's files: src/<SketchName>/…
	arduinoLibDir    = "libraries"      // one entry per pinned library
	arduinoBuildDir  = ".arduino"       // arduino-builder's build path
	arduinoCacheDir  = ".arduino-cache" // in the store root
	sandboxCache     = "/cache"
	// BuildLogName is the log of every command of an arduino build with
	// its output; it is kept in the store entry beside the outputs.
	BuildLogName = "build.log"
)

// stepArduino names the sandbox step that runs arduino.Run.
const stepArduino = "arduino"

func init() {
	registerStep(stepArduino, func(ctx context.Context, p *plan, args json.RawMessage) (string, error) {
		var job arduino.Job
		if err := json.Unmarshal(args, &job); err != nil {
			return "", fmt.Errorf("arduino step: %w", err)
		}
		res, err := arduino.Run(ctx, job, p.Env)
		logPath := filepath.Join(p.Dir, outDir, BuildLogName)
		if werr := os.WriteFile(logPath, res.Log, 0o644); werr != nil && err == nil {
			err = werr
		}
		if err != nil {
			out := string(res.Log)
			var ce *arduino.CompileError
			var me *arduino.MissingError
			switch {
			case asErr(err, &ce):
				out = ce.Output
			case asErr(err, &me):
				out = me.Output
			}
			return out, err
		}
		return "", nil
	})
}

// libFolderRE is what an installed library's folder name may hold; the
// Arduino IDE and arduino-cli install "Adafruit BMP280 Library" as
// Adafruit_BMP280_Library.
var libFolderRE = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// LibraryRoot finds the library inside an unpacked input: the directory
// holding library.properties (or, for a legacy library, headers),
// descending through single top-level folders as archives have them.
func LibraryRoot(root string) (string, error) {
	dir := root
	for i := 0; i < 4; i++ {
		if _, err := os.Stat(filepath.Join(dir, "library.properties")); err == nil {
			return dir, nil
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return "", err
		}
		var dirs []string
		headers := false
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") || e.Name() == "__MACOSX" {
				continue
			}
			if e.IsDir() {
				dirs = append(dirs, e.Name())
			} else if ext := filepath.Ext(e.Name()); ext == ".h" || ext == ".hpp" || ext == ".hh" {
				headers = true
			}
		}
		if headers {
			return dir, nil
		}
		if len(dirs) != 1 {
			break
		}
		dir = filepath.Join(dir, dirs[0])
	}
	return "", fmt.Errorf("%s holds no Arduino library (no library.properties and no header)", root)
}

// LibraryFolder is the folder name a library is installed under: its
// library.properties name with characters other than letters, digits,
// '.', '_' and '-' made '_' (fallback: the input's name).
func LibraryFolder(dir, fallback string) string {
	if p, _, err := arduino.LoadProps(filepath.Join(dir, "library.properties")); err == nil && p["name"] != "" {
		return libFolderRE.ReplaceAllString(p["name"], "_")
	}
	return fallback
}

// planArduino lays out an arduino recipe's build: the sketch's files
// copied under src/, the pinned libraries linked under libraries/, and one
// sandbox step running the arduino builder.
func (b *builder) planArduino(hostBuild string, p paths) ([]command, []mount, error) {
	d, ok := b.d.Extra.(*recipes.ArduinoDerivation)
	if !ok {
		return nil, nil, fmt.Errorf("%s: %w: arduino recipe without its derivation", b.r.File, recipes.ErrInvalid)
	}
	spec := d.Spec
	sketchDir := spec.SketchDir(b.r)
	base := filepath.Base(sketchDir)
	for _, f := range d.Files {
		dst := filepath.Join(hostBuild, arduinoSketchDir, base, filepath.FromSlash(f.Path))
		if err := copyBeneath(sketchDir, f.Path, f.SHA256, dst); err != nil {
			return nil, nil, err
		}
	}
	// The core: the platform directory inside its input.
	coreRoot := b.inputs[spec.Core]
	platRel := spec.Platform
	if platRel == "" {
		found, err := arduino.FindPlatform(coreRoot)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: input %s: %w", b.r.File, spec.Core, err)
		}
		rel, _ := filepath.Rel(coreRoot, found)
		platRel = filepath.ToSlash(rel)
	}
	pl, err := arduino.LoadPlatform(filepath.Join(coreRoot, filepath.FromSlash(platRel)))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: input %s: %w", b.r.File, spec.Core, err)
	}
	sel := arduino.Selection{Board: spec.Board, Options: spec.Options, Props: map[string]string{}}
	for k, v := range spec.Properties {
		sel.Props[k] = v
	}
	// The board the core describes, with the recipe's options and
	// properties, must be the kiln board: same MCU, clock, flash.
	if err := pl.Check(sel, arduino.Target{Name: b.board.Name, MCU: b.board.MCU, CPUHz: b.board.CPUHz, FlashSize: b.board.Flash.Size}); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", b.r.File, err)
	}
	bin := p.toolchain + "/" + b.tc.BinDir
	ctags := filepath.Join(b.tcPath, b.tc.BinDir, "arduino-ctags")
	if _, err := os.Stat(ctags); err != nil {
		return nil, nil, fmt.Errorf("%s: %w: toolchain %s has no arduino-ctags, which sketch preprocessing runs (use a toolchain with it, such as avr-gcc-5.4-arduino)", b.r.File, recipes.ErrInvalid, b.tc.Name)
	}
	sel.Props["compiler.path"] = bin + "/"
	for k, v := range spec.Properties {
		sel.Props[k] = v
	}
	job := arduino.Job{
		Platform:  p.input(spec.Core) + "/" + platRel,
		Selection: sel,
		Sketch:    p.build + "/" + arduinoSketchDir + "/" + base,
		BuildPath: p.build + "/" + arduinoBuildDir,
		ELF:       p.build + "/" + outDir + "/" + ELFName,
		Epoch:     DefaultSourceDateEpoch,
		Jobs:      b.jobs(),
		Ctags:     bin + "/arduino-ctags",
	}
	if len(spec.Libraries) > 0 {
		libs := filepath.Join(hostBuild, arduinoLibDir)
		if err := os.MkdirAll(libs, 0o755); err != nil {
			return nil, nil, err
		}
		folders := map[string]string{}
		for _, name := range spec.Libraries {
			root, err := LibraryRoot(b.inputs[name])
			if err != nil {
				return nil, nil, fmt.Errorf("%s: input %s: %w", b.r.File, name, err)
			}
			fallback := name
			if root != b.inputs[name] {
				fallback = filepath.Base(root) // a legacy library's folder in its archive
			}
			folder := LibraryFolder(root, fallback)
			if other, dup := folders[folder]; dup {
				return nil, nil, fmt.Errorf("%s: %w: inputs %s and %s hold the same library %s", b.r.File, recipes.ErrInvalid, other, name, folder)
			}
			folders[folder] = name
			rel, _ := filepath.Rel(b.inputs[name], root)
			target := p.input(name)
			if rel != "." {
				target += "/" + filepath.ToSlash(rel)
			}
			b.libMap = append(b.libMap, p.build+"/"+arduinoLibDir+"/"+folder, root)
			if err := os.Symlink(target, filepath.Join(libs, folder)); err != nil {
				return nil, nil, err
			}
		}
		job.Libraries = p.build + "/" + arduinoLibDir
	}
	if err := os.MkdirAll(filepath.Join(hostBuild, outDir), 0o755); err != nil {
		return nil, nil, err
	}
	// Objects and discovery results are kept between builds in the
	// store's cache, keyed by content (the inputs' hashes, the command
	// line, the sketch's files): a rebuild after an edit recompiles only
	// the sketch.
	var mounts []mount
	if !b.opts.NoCache {
		cache := filepath.Join(b.opts.Store.Root, arduinoCacheDir)
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return nil, nil, fmt.Errorf("firmware: %w", err)
		}
		job.Cache = cache
		if b.sandboxed {
			job.Cache = sandboxCache
			mounts = append(mounts, mount{Source: cache, Target: sandboxCache, RW: true})
		}
		ins := []string{"toolchain " + b.tc.Hash()}
		for _, in := range b.r.Inputs {
			ins = append(ins, in.Name+" "+in.SHA256)
		}
		sort.Strings(ins)
		job.Inputs = strings.Join(ins, "\n")
	}
	args, err := json.Marshal(job)
	if err != nil {
		return nil, nil, err
	}
	b.arduinoMap = b.pathMap(p, hostBuild, sketchDir, base)
	return []command{{Step: stepArduino, Args: args, What: "build sketch " + base}}, mounts, nil
}

// pathMap maps sandbox paths in compiler output back to host paths:
// the sketch's copy to the sketch directory, inputs to their store
// entries, the build directory to where it was kept.
func (b *builder) pathMap(p paths, hostBuild, sketchDir, base string) *strings.Replacer {
	pairs := []string{p.build + "/" + arduinoSketchDir + "/" + base, sketchDir}
	pairs = append(pairs, b.libMap...)
	names := make([]string, 0, len(b.inputs))
	for n := range b.inputs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		pairs = append(pairs, p.input(n), b.inputs[n])
	}
	pairs = append(pairs, p.toolchain, b.tcPath)
	return strings.NewReplacer(pairs...)
}

func (b *builder) jobs() int {
	if b.opts.Jobs > 0 {
		return b.opts.Jobs
	}
	return numCPU()
}

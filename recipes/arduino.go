package recipes

import (
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/firmware/arduino"
)

// KindArduino is a recipe that builds an unmodified Arduino sketch the way
// arduino-builder does, with every flag taken from the pinned core's
// platform.txt and boards.txt.
const KindArduino = "arduino"

// DefaultArduinoCore is the input an arduino recipe's core is taken from
// unless its arduino.core names another.
const DefaultArduinoCore = "arduino-core-avr"

// ArduinoSpec is the optional [arduino] table of a recipe of kind "arduino".
type ArduinoSpec struct {
	// Sketch is the sketch directory relative to the recipe's ("." by
	// default): it holds <dirname>.ino.
	Sketch string `toml:"sketch" json:"sketch"`
	// Core is the input holding the Arduino platform (default
	// "arduino-core-avr"); Platform the directory inside it with
	// platform.txt and boards.txt (default: the first found).
	Core     string `toml:"core" json:"core"`
	Platform string `toml:"platform" json:"platform,omitempty"`
	// Board is the boards.txt ID and Options its menu options; both
	// default to the kiln board's arduino mapping, and a recipe may not
	// contradict it.
	Board   string            `toml:"board" json:"board"`
	Options map[string]string `toml:"options" json:"options,omitempty"`
	// Properties are set last, like arduino-builder's -prefs.
	Properties map[string]string `toml:"properties" json:"properties,omitempty"`
	// Libraries are the inputs holding libraries (default: every input
	// but the core).
	Libraries []string `toml:"libraries" json:"libraries"`
}

// ArduinoDerivation is the kind-specific part of an arduino recipe's
// derivation: the spec and the sketch's files with their hashes.
type ArduinoDerivation struct {
	Spec  *ArduinoSpec `json:"spec"`
	Files []SourceFile `json:"files"`
}

func init() { RegisterKind(KindArduino, decodeArduino) }

func decodeArduino(r *Recipe, md *toml.MetaData, ext map[string]toml.Primitive) (any, error) {
	spec := &ArduinoSpec{}
	for k, prim := range ext {
		if k != "arduino" {
			return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, k)
		}
		if err := md.PrimitiveDecode(prim, spec); err != nil {
			return nil, fmt.Errorf("%w: arduino: %v", ErrInvalid, err)
		}
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if r.Toolchain == "" {
		return nil, bad("missing toolchain (an arduino recipe names the compiler closure, e.g. avr-gcc-5.4-arduino)")
	}
	if len(r.Sources) > 0 || len(r.Files) > 0 {
		return nil, bad("an arduino recipe takes no sources or files: the sketch's files are found as arduino-builder finds them")
	}
	if b := r.Build; len(b.CFlags)+len(b.CXXFlags)+len(b.ASFlags)+len(b.LDFlags)+len(b.Defines)+len(b.Includes)+len(b.CoreSources)+len(b.Libs)+len(b.Pre) > 0 || b.LinkerScript != "" {
		return nil, bad("an arduino recipe takes no [build] table: flags come from the core's platform.txt (set arduino.properties to change them)")
	}
	if spec.Sketch == "" {
		spec.Sketch = "."
	}
	spec.Sketch = path.Clean(spec.Sketch)
	if err := checkRelGlob(spec.Sketch); err != nil && spec.Sketch != "." {
		return nil, bad("arduino.sketch: %v", err)
	}
	if spec.Core == "" {
		spec.Core = DefaultArduinoCore
	}
	if spec.Platform != "" {
		if err := checkRelGlob(spec.Platform); err != nil {
			return nil, bad("arduino.platform: %v", err)
		}
	}
	inputs := map[string]bool{}
	for _, in := range r.Inputs {
		inputs[in.Name] = true
	}
	if !inputs[spec.Core] {
		return nil, bad("arduino.core: no input %q holds the Arduino core (add it to [[inputs]], or name the input in arduino.core)", spec.Core)
	}
	if spec.Libraries == nil {
		spec.Libraries = []string{}
		for _, in := range r.Inputs {
			if in.Name != spec.Core {
				spec.Libraries = append(spec.Libraries, in.Name)
			}
		}
	}
	seen := map[string]bool{}
	for _, l := range spec.Libraries {
		if !inputs[l] || l == spec.Core {
			return nil, bad("arduino.libraries: %q is not an input (other than the core)", l)
		}
		if seen[l] {
			return nil, bad("arduino.libraries: %q is listed twice", l)
		}
		seen[l] = true
	}
	sort.Strings(spec.Libraries)
	board, err := boards.Get(r.Board)
	if err != nil {
		return nil, err
	}
	if err := spec.resolveBoard(board); err != nil {
		return nil, err
	}
	return spec, nil
}

// resolveBoard fills Board and Options from the kiln board's mapping and
// refuses settings that contradict it.
func (s *ArduinoSpec) resolveBoard(b *boards.Board) error {
	m := b.Arduino
	if m == nil {
		if s.Board == "" {
			return fmt.Errorf("%w: board %s has no arduino mapping: set arduino.board to its ID in the core's boards.txt", ErrInvalid, b.Name)
		}
		return nil
	}
	if s.Board != "" && s.Board != m.Board {
		return fmt.Errorf("%w: arduino.board %q contradicts board %s, which is %q in the core's boards.txt", ErrInvalid, s.Board, b.Name, m.Board)
	}
	s.Board = m.Board
	opts := map[string]string{}
	for k, v := range m.Options {
		opts[k] = v
	}
	for k, v := range s.Options {
		if have, ok := m.Options[k]; ok && have != v {
			return fmt.Errorf("%w: arduino.options %s=%s contradicts board %s, which is %s=%s (use the kiln board for that hardware)", ErrInvalid, k, v, b.Name, k, have)
		}
		opts[k] = v
	}
	if len(opts) > 0 {
		s.Options = opts
	} else {
		s.Options = nil
	}
	return nil
}

// SketchDir is the absolute sketch directory of an arduino recipe.
func (s *ArduinoSpec) SketchDir(r *Recipe) string {
	return filepath.Join(r.Dir, filepath.FromSlash(s.Sketch))
}

// DeriveKind hashes the sketch's files (those arduino-builder would read).
func (s *ArduinoSpec) DeriveKind(r *Recipe) (any, error) {
	dir := s.SketchDir(r)
	files, err := arduino.SketchFiles(dir)
	if err != nil {
		return nil, err
	}
	d := &ArduinoDerivation{Spec: s, Files: []SourceFile{}}
	for _, f := range files {
		// Opened beneath the recipe directory: a sketch file (or the
		// sketch directory) linking out of it is refused.
		sum, err := r.hashFile(path.Join(filepath.ToSlash(s.Sketch), f))
		if err != nil {
			return nil, err
		}
		d.Files = append(d.Files, SourceFile{Path: f, SHA256: sum, Compile: !strings.HasSuffix(f, ".h")})
	}
	return d, nil
}

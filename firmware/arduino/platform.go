package arduino

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Sentinel errors.
var (
	// ErrBadPlatform: a platform.txt or boards.txt is malformed, or a board
	// or menu option the build asks for is not in it.
	ErrBadPlatform = errors.New("bad Arduino platform")
	// ErrContradiction: the core's board definition contradicts kiln's board
	// (another MCU, clock or more flash than the board has).
	ErrContradiction = errors.New("recipe contradicts its board")
)

// Platform is one Arduino hardware platform directory (the one holding
// platform.txt, boards.txt, cores/, variants/, libraries/), for example
// usr/share/arduino/hardware/arduino/avr in Debian's arduino-core-avr.
type Platform struct {
	Dir    string
	Arch   string // the directory's name: "avr"
	Vendor string // its parent's name: "arduino"
	Props  Props  // platform.txt
	boards Props  // boards.txt
	keys   []string
}

// LoadPlatform reads dir/platform.txt and dir/boards.txt.
func LoadPlatform(dir string) (*Platform, error) {
	pl := &Platform{Dir: dir, Arch: filepath.Base(dir), Vendor: filepath.Base(filepath.Dir(dir))}
	var err error
	if pl.Props, _, err = LoadProps(filepath.Join(dir, "platform.txt")); err != nil {
		return nil, err
	}
	if pl.boards, pl.keys, err = LoadProps(filepath.Join(dir, "boards.txt")); err != nil {
		return nil, err
	}
	return pl, nil
}

// FindPlatform returns the first directory under root (in lexical walk
// order) that holds both platform.txt and boards.txt.
func FindPlatform(root string) (string, error) {
	var found string
	stop := errors.New("found")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if fileExists(filepath.Join(p, "platform.txt")) && fileExists(filepath.Join(p, "boards.txt")) {
			found = p
			return stop
		}
		return nil
	})
	if err != nil && err != stop {
		return "", fmt.Errorf("arduino: find platform in %s: %w", root, err)
	}
	if found == "" {
		return "", fmt.Errorf("arduino: %w: no directory with platform.txt and boards.txt in %s", ErrBadPlatform, root)
	}
	return found, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// Boards lists the platform's board IDs, sorted.
func (pl *Platform) Boards() []string {
	seen := map[string]bool{}
	var ids []string
	for _, k := range pl.keys {
		id, _, _ := strings.Cut(k, ".")
		if id != "menu" && !seen[id] && pl.boards[id+".name"] != "" {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// Menus returns the menus of a board with their options in boards.txt
// order (the first is the default).
func (pl *Platform) Menus(id string) map[string][]string {
	menus := map[string][]string{}
	prefix := id + ".menu."
	seen := map[string]bool{}
	for _, k := range pl.keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		parts := strings.SplitN(rest, ".", 3)
		if len(parts) < 2 || seen[parts[0]+"."+parts[1]] {
			continue
		}
		seen[parts[0]+"."+parts[1]] = true
		menus[parts[0]] = append(menus[parts[0]], parts[1])
	}
	return menus
}

// Selection is what a build asks of a platform: a board, its menu options
// (menus not named take their first option, as arduino-cli does) and
// properties set last (like arduino-builder's -prefs).
type Selection struct {
	Board   string            `json:"board"`
	Options map[string]string `json:"options,omitempty"`
	Props   map[string]string `json:"properties,omitempty"`
}

// Options returns the full option set of a selection: every menu of the
// board with the chosen or default option, sorted by menu.
func (pl *Platform) Options(sel Selection) (map[string]string, error) {
	if pl.boards[sel.Board+".name"] == "" {
		return nil, fmt.Errorf("arduino: %w: board %q is not in %s (it has %s)", ErrBadPlatform, sel.Board,
			filepath.Join(pl.Dir, "boards.txt"), strings.Join(pl.Boards(), ", "))
	}
	menus := pl.Menus(sel.Board)
	out := map[string]string{}
	for menu, opts := range menus {
		out[menu] = opts[0]
	}
	for menu, opt := range sel.Options {
		opts, ok := menus[menu]
		if !ok {
			return nil, fmt.Errorf("arduino: %w: board %q has no menu %q", ErrBadPlatform, sel.Board, menu)
		}
		if !contains(opts, opt) {
			return nil, fmt.Errorf("arduino: %w: board %q menu %q has no option %q (it has %s)", ErrBadPlatform, sel.Board, menu, opt, strings.Join(opts, ", "))
		}
		out[menu] = opt
	}
	return out, nil
}

// FQBN is the fully qualified board name of a selection with all options,
// as arduino-builder's -fqbn takes it.
func (pl *Platform) FQBN(sel Selection) (string, error) {
	opts, err := pl.Options(sel)
	if err != nil {
		return "", err
	}
	s := pl.Vendor + ":" + pl.Arch + ":" + sel.Board
	var parts []string
	for _, m := range sortedMapKeys(opts) {
		parts = append(parts, m+"="+opts[m])
	}
	if len(parts) > 0 {
		s += ":" + strings.Join(parts, ",")
	}
	return s, nil
}

func sortedMapKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// DefaultIDEVersion is runtime.ide.version (the ARDUINO macro) when the
// selection does not set it: arduino-builder's default -core-api-version.
const DefaultIDEVersion = "10600"

// BuildProps assembles the build properties arduino-builder 1.3 would:
// platform.txt, the board's properties with its menu options merged,
// then the builder's own keys, then sel.Props. buildPath and sketchMain
// (the main .ino file) may be empty when only the board is of interest.
func (pl *Platform) BuildProps(sel Selection, buildPath, sketchMain string, epoch int64) (Props, error) {
	opts, err := pl.Options(sel)
	if err != nil {
		return nil, err
	}
	p := pl.Props.Clone()
	board := pl.boards.SubTree(sel.Board)
	for _, menu := range sortedMapKeys(opts) {
		board.Merge(board.SubTree("menu." + menu + "." + opts[menu]))
	}
	p.Merge(board)
	if buildPath != "" {
		p["build.path"] = buildPath
	}
	if sketchMain != "" {
		p["build.project_name"] = filepath.Base(sketchMain)
		p["build.source.path"] = filepath.Dir(sketchMain)
	}
	p["build.arch"] = strings.ToUpper(pl.Arch)
	core := p["build.core"]
	if core == "" {
		core = "arduino"
	}
	if strings.Contains(core, ":") {
		return nil, fmt.Errorf("arduino: %w: board %q uses core %q of another platform, which kiln does not support", ErrBadPlatform, sel.Board, core)
	}
	p["build.core"] = core
	p["build.core.path"] = filepath.Join(pl.Dir, "cores", core)
	p["build.system.path"] = filepath.Join(pl.Dir, "system")
	p["runtime.platform.path"] = pl.Dir
	p["runtime.hardware.path"] = filepath.Dir(pl.Dir)
	p["runtime.ide.version"] = DefaultIDEVersion
	p["ide_version"] = DefaultIDEVersion
	fqbn, _ := pl.FQBN(sel)
	p["build.fqbn"] = fqbn
	p["runtime.os"] = "linux"
	if v := p["build.variant"]; v == "" {
		p["build.variant.path"] = ""
	} else if strings.Contains(v, ":") {
		return nil, fmt.Errorf("arduino: %w: board %q uses variant %q of another platform, which kiln does not support", ErrBadPlatform, sel.Board, v)
	} else {
		p["build.variant.path"] = filepath.Join(pl.Dir, "variants", v)
	}
	if _, ok := p["software"]; !ok {
		p["software"] = "ARDUINO"
	}
	// arduino-builder puts the wall clock here; kiln the build's fixed time.
	p["extra.time.utc"] = strconv.FormatInt(epoch, 10)
	p["extra.time.local"] = strconv.FormatInt(epoch, 10)
	p["extra.time.zone"] = "0"
	p["extra.time.dst"] = "0"
	if _, ok := p["build.board"]; !ok {
		p["build.board"] = strings.ToUpper(pl.Arch + "_" + sel.Board)
	}
	if v, ok := sel.Props["runtime.ide.version"]; ok {
		p["ide_version"] = v
	}
	p.Merge(sel.Props)
	return p, nil
}

// Target is what kiln's board file says of the hardware, to check a
// selection against.
type Target struct {
	Name      string
	MCU       string
	CPUHz     int64
	FlashSize uint32
}

// Check fails with ErrContradiction if the selected board is not the
// target: another build.mcu, another build.f_cpu, or an upload.maximum_size
// larger than the target's application flash.
func (pl *Platform) Check(sel Selection, t Target) error {
	p, err := pl.BuildProps(sel, "", "", 0)
	p = expandAll(p)
	if err != nil {
		return err
	}
	fqbn, _ := pl.FQBN(sel)
	if mcu := p["build.mcu"]; mcu != t.MCU {
		return fmt.Errorf("arduino: %w: %s builds for %s (build.mcu), board %s is %s", ErrContradiction, fqbn, orNone(mcu), t.Name, t.MCU)
	}
	fcpu := strings.TrimRight(strings.ToUpper(p["build.f_cpu"]), "UL")
	if hz, err := strconv.ParseInt(fcpu, 10, 64); err != nil || hz != t.CPUHz {
		return fmt.Errorf("arduino: %w: %s runs at %s Hz (build.f_cpu), board %s at %d Hz", ErrContradiction, fqbn, orNone(p["build.f_cpu"]), t.Name, t.CPUHz)
	}
	if ms := p["upload.maximum_size"]; ms != "" {
		n, err := strconv.ParseUint(ms, 10, 32)
		if err != nil {
			return fmt.Errorf("arduino: %w: %s: upload.maximum_size %q", ErrBadPlatform, fqbn, ms)
		}
		if uint32(n) > t.FlashSize {
			return fmt.Errorf("arduino: %w: %s allows %d bytes of program (upload.maximum_size), board %s has %d", ErrContradiction, fqbn, n, t.Name, t.FlashSize)
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// expandAll expands every value (for checks of values that name others).
func expandAll(p Props) Props {
	q := Props{}
	for k, v := range p {
		q[k] = p.Expand(v)
	}
	return q
}

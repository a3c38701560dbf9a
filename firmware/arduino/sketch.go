package arduino

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// ErrBadSketch: the sketch directory has no main file or unreadable files.
var ErrBadSketch = errors.New("bad sketch")

// Extensions arduino-builder 1.3 accepts in a sketch (lower-cased).
var (
	mainExts       = map[string]bool{".ino": true, ".pde": true}
	additionalExts = map[string]bool{".h": true, ".c": true, ".hpp": true, ".hh": true, ".cpp": true, ".s": true}
	sourceExts     = map[string]bool{".c": true, ".cpp": true, ".s": true}
	// scmDirs are skipped like hidden files and directories.
	scmDirs = map[string]bool{"CVS": true, "RCS": true, ".git": true, ".github": true, ".svn": true, ".hg": true, ".bzr": true, ".vscode": true}
)

// SketchFile is one file of a sketch.
type SketchFile struct {
	Path   string // absolute
	Source string
}

// Sketch is a loaded sketch directory.
type Sketch struct {
	Dir        string
	Main       SketchFile
	Others     []SketchFile // other .ino/.pde files in the root, by path
	Additional []SketchFile // .h/.c/.cpp/.S… anywhere below, by path
}

// SketchFiles lists the files of the sketch in dir the way arduino-builder
// 1.3 collects them (valid extensions, recursively, hidden and
// version-control entries skipped), as slash-separated paths relative to
// dir, sorted. The main file dir/<dirname>.ino (or .pde) must be there.
func SketchFiles(dir string) ([]string, error) {
	var files []string
	err := walkSorted(dir, func(p string, d fs.DirEntry) error {
		if d.IsDir() {
			return nil
		}
		ext := strings.ToLower(filepath.Ext(p))
		if !mainExts[ext] && !additionalExts[ext] {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("arduino: sketch %s: %w", dir, err)
	}
	if _, err := mainFile(dir, files); err != nil {
		return nil, err
	}
	sort.Strings(files)
	return files, nil
}

// mainFile picks <dirname>.ino (or .pde) from the sketch's files.
func mainFile(dir string, files []string) (string, error) {
	base := filepath.Base(dir)
	var found []string
	for _, f := range files {
		if f == base+".ino" || f == base+".pde" {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("arduino: %w: %s has no main file %s.ino (a sketch's main file is named after its directory)", ErrBadSketch, dir, base)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("arduino: %w: %s has both %s.ino and %s.pde", ErrBadSketch, dir, base, base)
}

// walkSorted walks dir in lexical order, skipping hidden and version
// control entries, following symbolic links as arduino-builder does.
func walkSorted(dir string, fn func(string, fs.DirEntry) error) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if name[0] == '.' || scmDirs[name] {
			continue
		}
		p := filepath.Join(dir, name)
		if e.Type()&fs.ModeSymlink != 0 {
			fi, err := os.Stat(p)
			if err != nil {
				continue
			}
			e = fs.FileInfoToDirEntry(fi)
		}
		if err := fn(p, e); err == errSkip {
			continue
		} else if err != nil {
			return err
		}
		if e.IsDir() {
			if err := walkSorted(p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// LoadSketch reads the sketch in dir.
func LoadSketch(dir string) (*Sketch, error) {
	files, err := SketchFiles(dir)
	if err != nil {
		return nil, err
	}
	main, _ := mainFile(dir, files)
	s := &Sketch{Dir: dir}
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f))
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("arduino: %w", err)
		}
		sf := SketchFile{Path: p, Source: string(data)}
		ext := strings.ToLower(filepath.Ext(f))
		switch {
		case f == main:
			s.Main = sf
		case mainExts[ext]:
			if !strings.Contains(f, "/") {
				s.Others = append(s.Others, sf)
			}
		default:
			s.Additional = append(s.Additional, sf)
		}
	}
	return s, nil
}

var includesArduinoH = regexp.MustCompile(`(?m)^\s*#\s*include\s*[<"]Arduino\.h[>"]`)

// Merge concatenates the sketch's .ino files as arduino-builder 1.3 does:
// #include <Arduino.h> unless the main file includes it, then each file
// behind a #line directive naming it. lineOffset is the number of lines
// before the main file's first line in the merged source, plus one.
func (s *Sketch) Merge() (src string, lineOffset int) {
	var b strings.Builder
	if !includesArduinoH.MatchString(s.Main.Source) {
		b.WriteString("#include <Arduino.h>\n")
		lineOffset++
	}
	b.WriteString("#line 1 " + quoteCpp(s.Main.Path) + "\n")
	lineOffset++
	for _, f := range append([]SketchFile{s.Main}, s.Others...) {
		b.WriteString("#line 1 " + quoteCpp(f.Path) + "\n")
		b.WriteString(f.Source)
		b.WriteString("\n")
	}
	return b.String(), lineOffset + 1
}

func quoteCpp(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

// parseCppString parses a C string as gcc prints it in line markers.
func parseCppString(line string) (string, string, bool) {
	if len(line) < 1 || line[0] != '"' {
		return "", line, false
	}
	var b strings.Builder
	for i := 1; i < len(line); i++ {
		switch c := line[i]; c {
		case '\\':
			i++
			if i >= len(line) {
				return "", line, false
			}
			b.WriteByte(line[i])
		case '"':
			return b.String(), line[i+1:], true
		default:
			b.WriteByte(c)
		}
	}
	return "", line, false
}

// lineMarkerFile returns the file named by a gcc line marker (`# 12 "f"`).
func lineMarkerFile(line string) string {
	split := strings.SplitN(line, " ", 3)
	if len(split) < 3 || split[0] != "#" {
		return ""
	}
	if _, err := strconv.Atoi(split[1]); err != nil {
		return ""
	}
	str, rest, ok := parseCppString(split[2])
	if ok && (rest == "" || rest[0] == ' ') {
		return str
	}
	return ""
}

// filterSketchSource keeps the lines of preprocessed source that come from
// the sketch's .ino files (arduino-builder's FilterSketchSource).
func (s *Sketch) filterSketchSource(pre string) string {
	names := map[string]bool{s.Main.Path: true}
	for _, f := range s.Others {
		names[f.Path] = true
	}
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(pre))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		if f := lineMarkerFile(line); f != "" {
			in = names[f]
		}
		if in {
			b.WriteString(line)
			b.WriteString("\n")
		}
	}
	return b.String()
}

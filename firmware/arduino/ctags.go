package arduino

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// tag is one line of ctags output (arduino-builder's types.CTag).
type tag struct {
	Name, File, Kind, Code   string
	Line                     int
	Class, Struct, Namespace string
	Prototype, Modifiers     string
	skip                     bool
}

// prototype is one prototype to insert.
type prototype struct {
	File, Prototype, Modifiers string
	Line                       int
}

// parseCtags turns arduino-ctags output into prototypes and the line
// where they go, with arduino-builder 1.3's rules (ctags/ctags_parser.go,
// ctags_to_prototypes.go).
func parseCtags(out string) ([]prototype, int) {
	var tags []*tag
	for _, row := range strings.Split(out, "\n") {
		if row = strings.TrimSpace(row); row != "" {
			tags = append(tags, parseTag(row))
		}
	}
	known := func(t *tag) bool { return t.Kind == "prototype" || t.Kind == "function" }
	handled := func(t *tag) bool { return t.Class == "" && t.Struct == "" && t.Namespace == "" }
	skipWhere := func(f func(*tag) bool) {
		for _, t := range tags {
			if !t.skip {
				t.skip = f(t)
			}
		}
	}
	skipWhere(func(t *tag) bool { return !known(t) })
	skipWhere(func(t *tag) bool { return !handled(t) })
	for _, t := range tags {
		if !t.skip {
			addPrototype(t)
		}
	}
	defined := map[string]bool{}
	for _, t := range tags {
		if t.Kind == "prototype" {
			defined[t.Prototype] = true
		}
	}
	for _, t := range tags {
		if defined[t.Prototype] {
			t.skip = true
		}
	}
	seen := map[string]bool{}
	for _, t := range tags {
		if !seen[t.Prototype] && !t.skip {
			seen[t.Prototype] = true
		} else {
			t.skip = true
		}
	}
	skipWhere(prototypeAndCodeDontMatch)

	// Where to insert: the first function, or an earlier use of a
	// function's address.
	first := -1
	for _, t := range tags {
		if known(t) && handled(t) && t.Kind == "function" {
			first = t.Line
			break
		}
	}
	var names []string
	for _, t := range tags {
		if t.Kind == "function" {
			names = append(names, t.Name)
		}
	}
	ptr := -1
outer:
	for _, t := range tags {
		for _, n := range names {
			if strings.Contains(t.Code, "&"+n) {
				ptr = t.Line
				break outer
			}
		}
	}
	line := first
	if first == -1 || (ptr != -1 && ptr < first) {
		line = ptr
	}
	var protos []prototype
	for _, t := range tags {
		if strings.TrimSpace(t.Prototype) == "" || t.skip {
			continue
		}
		protos = append(protos, prototype{File: t.File, Prototype: t.Prototype, Modifiers: t.Modifiers, Line: t.Line})
	}
	return protos, line
}

func parseTag(row string) *tag {
	t := &tag{}
	parts := strings.Split(row, "\t")
	t.Name = parts[0]
	if len(parts) > 1 {
		t.File = strings.ReplaceAll(parts[1], `\\`, `\`)
	}
	var signature, returntype string
	if len(parts) > 2 {
		for _, part := range parts[2:] {
			field, value, ok := strings.Cut(part, ":")
			if !ok {
				continue
			}
			value = strings.TrimSpace(value)
			switch field {
			case "kind":
				t.Kind = value
			case "line":
				t.Line, _ = strconv.Atoi(value)
			case "signature":
				signature = value
			case "returntype":
				returntype = value
			case "class":
				t.Class = value
			case "struct":
				t.Struct = value
			case "namespace":
				t.Namespace = value
			}
		}
	}
	t.Prototype = returntype + " " + t.Name + signature + ";"
	if i, j := strings.Index(row, "/^"), strings.Index(row, "$/;"); i >= 0 && j >= 0 && i+2 <= j {
		t.Code = row[i+2 : j]
	}
	return t
}

func addPrototype(t *tag) {
	if strings.Index(t.Prototype, "template") == 0 || strings.Index(t.Code, "template") == 0 {
		code := t.Code
		if strings.Contains(code, "{") {
			code = code[:strings.Index(code, "{")]
		} else {
			code = code[:strings.LastIndex(code, ")")+1]
		}
		t.Prototype = code + ";"
		return
	}
	mods := ""
	if strings.Contains(t.Code, "static ") {
		mods += " static"
	}
	if strings.Contains(t.Code, `extern "C" `) {
		mods += ` extern "C"`
	}
	t.Modifiers = strings.TrimSpace(mods)
}

func prototypeAndCodeDontMatch(t *tag) bool {
	code := removeSpaces(t.Code)
	if !strings.Contains(code, ")") {
		// A signature over several lines: read up to ten lines of the file.
		if f, err := os.Open(t.File); err == nil {
			sc := bufio.NewScanner(f)
			line := 1
			for sc.Scan() && line < t.Line {
				line++
			}
			newcode := sc.Text()
			for sc.Scan() && line < t.Line+10 && !strings.Contains(newcode, ")") {
				newcode += sc.Text()
			}
			if strings.Contains(newcode, ")") {
				code = removeSpaces(newcode)
			}
			f.Close()
		}
	}
	proto := removeSpaces(t.Prototype)
	proto = proto[:len(proto)-1]
	return !strings.Contains(code, proto)
}

func removeSpaces(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), "\t", "")
}

// addPrototypes inserts the prototypes into the merged source
// (arduino-builder's PrototypesAdder).
func addPrototypes(src string, lineOffset int, protos []prototype, firstLine int) string {
	src = strings.ReplaceAll(src, "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	rows := strings.Split(src, "\n")
	if firstLine > len(rows)-1 {
		return src
	}
	insertion := firstLine + lineOffset - 1
	if insertion < 0 {
		insertion = 0
	}
	at := len(strings.Join(rows[:insertion], "\n")) + 1
	if insertion == 0 {
		at = 1 // as arduino-builder: len("")+1
	}
	section := prototypeSection(firstLine, protos)
	if at > len(src) {
		at = len(src)
	}
	return src[:at] + section + src[at:]
}

func prototypeSection(line int, protos []prototype) string {
	if len(protos) == 0 {
		return ""
	}
	var rows []string
	for _, p := range protos {
		if strings.Contains(p.Prototype, "=") {
			continue
		}
		rows = append(rows, "#line "+strconv.Itoa(p.Line)+" "+quoteCpp(p.File))
		if p.Modifiers != "" {
			rows = append(rows, p.Modifiers+" "+p.Prototype)
		} else {
			rows = append(rows, p.Prototype)
		}
	}
	return strings.Join(rows, "\n") + "\n#line " + strconv.Itoa(line) + " " + quoteCpp(protos[0].File) + "\n"
}

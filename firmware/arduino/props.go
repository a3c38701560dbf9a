package arduino

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Props is a set of Arduino build properties: platform.txt, boards.txt and
// the values the builder adds, keyed by dotted names.
type Props map[string]string

// ParseProps parses a properties file the way arduino-builder does:
// "key=value" lines, '#' comments, blank lines; a key ending in ".linux" (the
// host this builder runs on) replaces the plain key. keys lists the keys in
// file order (boards.txt menus take their default from the first option).
func ParseProps(name string, data []byte) (Props, []string, error) {
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	text = strings.ReplaceAll(text, "\r", "\n")
	p := Props{}
	var keys []string
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, nil, fmt.Errorf("%s:%d: %w: %q is not key=value", name, i+1, ErrBadPlatform, line)
		}
		k = strings.Replace(strings.TrimSpace(k), ".linux", "", 1)
		if _, seen := p[k]; !seen {
			keys = append(keys, k)
		}
		p[k] = strings.TrimSpace(v)
	}
	return p, keys, nil
}

// LoadProps reads and parses a properties file.
func LoadProps(name string) (Props, []string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, nil, fmt.Errorf("arduino: %w", err)
	}
	return ParseProps(name, data)
}

// Clone copies p.
func (p Props) Clone() Props {
	q := make(Props, len(p))
	for k, v := range p {
		q[k] = v
	}
	return q
}

// Merge sets every key of q in p.
func (p Props) Merge(q Props) {
	for k, v := range q {
		p[k] = v
	}
}

// SubTree returns the keys under prefix+"." with the prefix removed.
func (p Props) SubTree(prefix string) Props {
	q := Props{}
	for k, v := range p {
		if rest, ok := strings.CutPrefix(k, prefix+"."); ok {
			q[rest] = v
		}
	}
	return q
}

// Expand replaces {key} by the key's value, repeatedly (at most ten
// passes, as arduino-builder does) so values may name other keys. Unknown
// {names} stay as they are.
func (p Props) Expand(s string) string {
	for i := 0; i < 10; i++ {
		var b strings.Builder
		changed := false
		rest := s
		for {
			open := strings.IndexByte(rest, '{')
			if open < 0 {
				b.WriteString(rest)
				break
			}
			end := strings.IndexByte(rest[open:], '}')
			if end < 0 {
				b.WriteString(rest)
				break
			}
			key := rest[open+1 : open+end]
			if v, ok := p[key]; ok && !strings.ContainsAny(key, "{ ") {
				b.WriteString(rest[:open])
				b.WriteString(v)
				changed = true
			} else {
				b.WriteString(rest[:open+end+1])
			}
			rest = rest[open+end+1:]
		}
		s = b.String()
		if !changed {
			break
		}
	}
	return s
}

// deleteUnexpanded removes every {…} left in s (arduino-builder does this
// for the preprocessor recipes).
func deleteUnexpanded(s string) string {
	for {
		open := strings.IndexByte(s, '{')
		if open < 0 {
			return s
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return s
		}
		s = s[:open] + s[open+end+1:]
	}
}

var errQuoting = errors.New("unbalanced quotes")

// SplitCommand splits an expanded recipe into arguments the way
// arduino-builder does: on spaces, with "…" or '…' grouping words; empty
// arguments are dropped.
func SplitCommand(input string) ([]string, error) {
	var parts []string
	escaping := byte(0)
	arg := ""
	for _, part := range strings.Split(input, " ") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if escaping == 0 {
			if part[0] != '"' && part[0] != '\'' {
				parts = append(parts, part)
				continue
			}
			escaping = part[0]
			part = part[1:]
			arg = ""
			if part == "" {
				arg = " "
				continue
			}
		}
		if last := part[len(part)-1]; last != '"' && last != '\'' {
			arg += part + " "
			continue
		}
		arg = strings.TrimSpace(arg + part[:len(part)-1])
		if arg != "" {
			parts = append(parts, arg)
		}
		escaping = 0
	}
	if escaping != 0 {
		return nil, fmt.Errorf("arduino: command %q: %w", input, errQuoting)
	}
	return parts, nil
}

// sortedKeys returns p's keys in order.
func (p Props) sortedKeys() []string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

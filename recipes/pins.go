package recipes

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ErrRewrite is returned (wrapped) when a pin cannot be moved in a recipe
// or toolchain file's text (its sources are not one array on one line, or
// its sha256 line is missing).
var ErrRewrite = errors.New("cannot rewrite pin")

// snapshotRE matches a snapshot-archive URL of a pool file, whatever the
// host: BASE/archive/ARCHIVE/YYYYMMDDTHHMMSSZ/pool/….
var snapshotRE = regexp.MustCompile(`^https://[^/\s]+(/[^\s]*)?/archive/[^/\s]+/[0-9]{8}T[0-9]{6}Z/pool/`)

// IsSnapshotSource reports whether a source is a snapshot-archive URL (the
// durable fallback of a deb: pin).
func IsSnapshotSource(s string) bool { return snapshotRE.MatchString(s) }

// DebPin returns the deb: source of an input (the first one) and whether
// it has one.
func (in Input) DebPin() (string, bool) {
	for _, s := range in.Sources {
		if strings.HasPrefix(s, "deb:") {
			return s, true
		}
	}
	return "", false
}

// PinnedSources is the sources list of an input moved to the deb: source
// deb with its snapshot-archive copy snapshot: the old deb: source is
// replaced in place, every old snapshot URL dropped and the new one put
// right after the deb: source, other sources (mirrors, files) kept in order.
func PinnedSources(old []string, deb, snapshot string) []string {
	var out []string
	placed := false
	for _, s := range old {
		switch {
		case strings.HasPrefix(s, "deb:") && !placed:
			out = append(out, deb)
			if snapshot != "" {
				out = append(out, snapshot)
			}
			placed = true
		case IsSnapshotSource(s):
		default:
			out = append(out, s)
		}
	}
	if !placed {
		out = append([]string{deb, snapshot}, out...)
	}
	return out
}

// PinEdit moves one pin of a recipe or toolchain file: the block (an
// [[inputs]] or [[packages]] table) whose sources hold Old and whose
// sha256 is OldSHA256 gets Sources and SHA256.
type PinEdit struct {
	Old, OldSHA256 string
	Sources        []string
	SHA256         string
}

// RewritePins applies edits to a recipe or toolchain file's text, keeping
// everything else (comments, layout) byte for byte. file names it in errors.
func RewritePins(file string, text []byte, edits []PinEdit) ([]byte, error) {
	lines := strings.SplitAfter(string(text), "\n")
	for _, e := range edits {
		quoted := strconv.Quote(e.Old)
		at := -1
		for i, l := range lines {
			if k, _, ok := strings.Cut(strings.TrimSpace(l), "="); ok && strings.TrimSpace(k) == "sources" && strings.Contains(l, quoted) {
				if at >= 0 {
					return nil, fmt.Errorf("%s: %w: %s appears in two blocks", file, ErrRewrite, e.Old)
				}
				at = i
			}
		}
		if at < 0 {
			return nil, fmt.Errorf("%s: %w: no one-line sources array holds %s", file, ErrRewrite, quoted)
		}
		l := lines[at]
		open, end := strings.Index(l, "["), strings.LastIndex(l, "]")
		if open < 0 || end < open {
			return nil, fmt.Errorf("%s:%d: %w: sources of %s is not an array on one line", file, at+1, ErrRewrite, e.Old)
		}
		q := make([]string, len(e.Sources))
		for i, s := range e.Sources {
			q[i] = strconv.Quote(s)
		}
		lines[at] = l[:open+1] + strings.Join(q, ", ") + l[end:]
		if e.SHA256 == e.OldSHA256 {
			continue
		}
		// The sha256 line of the same block: between the table headers
		// around the sources line.
		start, stop := 0, len(lines)
		for i := at; i >= 0; i-- {
			if strings.HasPrefix(strings.TrimSpace(lines[i]), "[") && i != at {
				start = i
				break
			}
		}
		for i := at + 1; i < len(lines); i++ {
			if strings.HasPrefix(strings.TrimSpace(lines[i]), "[") {
				stop = i
				break
			}
		}
		found := false
		for i := start; i < stop; i++ {
			k, v, ok := strings.Cut(lines[i], "=")
			if ok && strings.TrimSpace(k) == "sha256" && strings.Contains(v, strconv.Quote(e.OldSHA256)) {
				lines[i] = k + "=" + strings.Replace(v, e.OldSHA256, e.SHA256, 1)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: %w: the block of %s has no sha256 = %q line", file, ErrRewrite, e.Old, e.OldSHA256)
		}
	}
	return []byte(strings.Join(lines, "")), nil
}

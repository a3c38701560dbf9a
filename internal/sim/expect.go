package sim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"kiln.dev/kiln/recipes"
)

// Outcome is one test's verdict.
type Outcome struct {
	Name string
	// Failures says what did not hold, each with what was expected and
	// what the run did (a diff for text).
	Failures []string
	Result   *Result
}

// Passed reports whether every expectation held.
func (o *Outcome) Passed() bool { return len(o.Failures) == 0 }

// TestOptions turns a recipe's [[test]] into run options (board and
// artifact still to be set).
func TestOptions(t recipes.Test) Options {
	o := Options{For: t.Duration(), InputAt: t.Start()}
	if t.Input != "" {
		o.Input = strings.NewReader(t.Input)
	}
	for _, p := range t.Pins {
		o.Pins = append(o.Pins, p.Pin)
	}
	if len(t.ADC) > 0 {
		o.ADC = map[int]int{}
		for ch, mv := range t.ADC {
			n, _ := recipes.ADCChannel(ch)
			o.ADC[n] = mv
		}
	}
	if len(t.Drive) > 0 {
		o.Drive = t.Drive
	}
	return o
}

// Expect checks a run against the test's expectations; dir is the recipe
// directory (for golden files).
func Expect(t recipes.Test, dir string, res *Result) *Outcome {
	o := &Outcome{Name: t.Name, Result: res}
	got := string(res.UART)
	limit := fmt.Sprintf("in %v of simulated time", res.Simulated.Round(time.Microsecond))
	if t.Output != nil && got != *t.Output {
		o.Failures = append(o.Failures, fmt.Sprintf("output differs %s (- expected, + actual):\n%s", limit, Diff(*t.Output, got)))
	}
	if t.Golden != "" {
		want, err := os.ReadFile(filepath.Join(dir, t.Golden))
		switch {
		case err != nil:
			o.Failures = append(o.Failures, fmt.Sprintf("golden file: %v", err))
		case !bytes.Equal(want, res.UART):
			o.Failures = append(o.Failures, fmt.Sprintf("output differs from %s %s (- expected, + actual):\n%s", t.Golden, limit, Diff(string(want), got)))
		}
	}
	pos := 0
	for i, m := range t.Match {
		re := regexp.MustCompile("(?m)" + m)
		loc := re.FindStringIndex(got[pos:])
		if loc == nil {
			o.Failures = append(o.Failures, fmt.Sprintf("match %d of %d, /%s/, not found %s after what matched before; the output from there:\n%s",
				i+1, len(t.Match), m, limit, indent(tail(got[pos:], 40))))
			break
		}
		pos += loc[1]
	}
	for _, p := range t.Pins {
		if msg := checkPeriod(p, res); msg != "" {
			o.Failures = append(o.Failures, msg)
		}
	}
	if res.Halted != "" && strings.HasPrefix(res.Halted, "crashed") {
		o.Failures = append(o.Failures, "the core "+res.Halted)
	}
	return o
}

// checkPeriod: the pin's rising edges come a period apart (± tolerance),
// and at least one whole period was seen.
func checkPeriod(p recipes.PinTest, res *Result) string {
	period, tol := p.PeriodTolerance()
	var rises []time.Duration
	last := -1
	for _, pc := range res.Pins {
		if pc.Pin != p.Pin {
			continue
		}
		if pc.Level == 1 && last == 0 {
			rises = append(rises, pc.At)
		}
		last = pc.Level
	}
	want := fmt.Sprintf("%s toggles with a period of %v ± %v", p.Pin, period, tol)
	if len(rises) < 2 {
		return fmt.Sprintf("%s: saw %d rising edges in %v of simulated time, need 2 for a period", want, len(rises), res.Simulated)
	}
	var bad []string
	for i := 1; i < len(rises); i++ {
		d := rises[i] - rises[i-1]
		if d < period-tol || d > period+tol {
			bad = append(bad, fmt.Sprintf("period %d: %v (rising at %v and %v)", i, d, rises[i-1], rises[i]))
		}
	}
	if len(bad) > 0 {
		return want + ":\n" + indent(strings.Join(bad, "\n"))
	}
	return ""
}

// Diff is a line diff of want and got: common lines with two spaces,
// lines only in want with "- ", only in got with "+ "; unprintable bytes
// are escaped, so "\r" and a missing final newline show.
func Diff(want, got string) string {
	a, b := splitLines(want), splitLines(got)
	// Longest common subsequence over lines (outputs are small).
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			out = append(out, "  "+show(a[i]))
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "- "+show(a[i]))
			i++
		default:
			out = append(out, "+ "+show(b[j]))
			j++
		}
	}
	return strings.Join(elide(out), "\n")
}

// elide keeps changed lines with three lines of context around them.
func elide(lines []string) []string {
	keep := make([]bool, len(lines))
	for i, l := range lines {
		if !strings.HasPrefix(l, "  ") {
			for k := max(0, i-3); k <= min(len(lines)-1, i+3); k++ {
				keep[k] = true
			}
		}
	}
	var out []string
	skipped := 0
	for i, l := range lines {
		if keep[i] {
			if skipped > 0 {
				out = append(out, fmt.Sprintf("  ... %d equal lines", skipped))
				skipped = 0
			}
			out = append(out, l)
		} else {
			skipped++
		}
	}
	if skipped > 0 {
		out = append(out, fmt.Sprintf("  ... %d equal lines", skipped))
	}
	return out
}

// splitLines splits after each "\n", keeping it.
func splitLines(s string) []string {
	var lines []string
	for s != "" {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			lines = append(lines, s)
			break
		}
		lines = append(lines, s[:i+1])
		s = s[i+1:]
	}
	return lines
}

// show escapes a line: printable text as it is, the rest as Go escapes.
func show(l string) string {
	body, nl := strings.CutSuffix(l, "\n")
	q := strconv.Quote(body)
	if !nl {
		return q[1:len(q)-1] + "  (no newline)"
	}
	return q[1 : len(q)-1]
}

func tail(s string, lines int) string {
	ls := splitLines(s)
	if len(ls) > lines {
		ls = append([]string{fmt.Sprintf("... %d lines before", len(ls)-lines)}, ls[len(ls)-lines:]...)
	}
	if len(ls) == 0 {
		return "(nothing)"
	}
	for i := range ls {
		ls[i] = show(ls[i])
	}
	return strings.Join(ls, "\n")
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

package recipes

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Test is one [[test]] section of a recipe: what `kiln test` feeds the
// firmware on its simulated board and what it expects back.
//
//	[[test]]
//	name = "prints the table"
//	for = "3s"                       # simulated time limit
//	input = "xyz"                    # sent to the UART's receive line
//	input_at = "500ms"               # from this simulated time on
//	output = "exact text"            # the whole UART output, exactly
//	match = ["^hello", "tick 2"]     # regular expressions, in order
//	golden = "testdata/out.txt"      # the whole output, from a file
//	adc = { A0 = 2000 }              # millivolts on ADC channels (AVR)
//	drive = { PD2 = 1 }              # input pins held low or high (AVR)
//	[[test.pin]]
//	pin = "PB5"
//	period = "2000ms"                # a full high-low cycle
//	tolerance = "1%"
type Test struct {
	Name    string         `toml:"name"`
	For     string         `toml:"for"`
	Input   string         `toml:"input"`
	InputAt string         `toml:"input_at"`
	Output  *string        `toml:"output"`
	Match   []string       `toml:"match"`
	Golden  string         `toml:"golden"`
	ADC     map[string]int `toml:"adc"`
	Drive   map[string]int `toml:"drive"`
	Pins    []PinTest      `toml:"pin"`
}

// PinTest expects a pin to toggle with a period.
type PinTest struct {
	Pin       string `toml:"pin"`
	Period    string `toml:"period"`
	Tolerance string `toml:"tolerance"`
}

var pinRE = regexp.MustCompile(`^P[A-L][0-7]$`)

// Duration returns the test's simulated time limit.
func (t Test) Duration() time.Duration { d, _ := time.ParseDuration(t.For); return d }

// Start returns when the input starts.
func (t Test) Start() time.Duration { d, _ := time.ParseDuration(t.InputAt); return d }

// PeriodTolerance returns the expected period and the allowed deviation.
func (p PinTest) PeriodTolerance() (period, tol time.Duration) {
	period, _ = time.ParseDuration(p.Period)
	s := strings.TrimSpace(p.Tolerance)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		f, _ := strconv.ParseFloat(strings.TrimSpace(pct), 64)
		return period, time.Duration(float64(period) * f / 100)
	}
	tol, _ = time.ParseDuration(s)
	return period, tol
}

// ADCChannel reads "A0" or "0" as channel 0.
func ADCChannel(name string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(strings.ToUpper(name), "A"))
	if err != nil || n < 0 || n > 15 {
		return 0, fmt.Errorf("adc channel %q: want A0 to A15", name)
	}
	return n, nil
}

func (r *Recipe) validateTests(src string) error {
	names := map[string]bool{}
	for i, t := range r.Tests {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%s:%s: %w: test %d (%s): %s", r.File, keyPos(src, "test"), ErrInvalid, i+1, t.Name, fmt.Sprintf(format, a...))
		}
		if t.Name == "" {
			return bad("missing name")
		}
		if names[t.Name] {
			return bad("the name is used twice")
		}
		names[t.Name] = true
		if d, err := time.ParseDuration(t.For); err != nil || d <= 0 {
			return bad("for = %q: want a simulated time limit such as \"3s\"", t.For)
		}
		if t.InputAt != "" {
			if d, err := time.ParseDuration(t.InputAt); err != nil || d < 0 {
				return bad("input_at = %q: want a duration", t.InputAt)
			}
		}
		if t.Output == nil && len(t.Match) == 0 && t.Golden == "" && len(t.Pins) == 0 {
			return bad("expects nothing: give output, match, golden or a [[test.pin]]")
		}
		for _, m := range t.Match {
			if _, err := regexp.Compile(m); err != nil {
				return bad("match %q: %v", m, err)
			}
		}
		if t.Golden != "" {
			if err := checkRelGlob(t.Golden); err != nil || strings.ContainsAny(t.Golden, "*?[") {
				return bad("golden %q: want a file inside the recipe directory", t.Golden)
			}
			t.Golden = path.Clean(t.Golden)
		}
		for ch := range t.ADC {
			if _, err := ADCChannel(ch); err != nil {
				return bad("%v", err)
			}
		}
		for p := range t.Drive {
			if !pinRE.MatchString(p) {
				return bad("drive %q: want a port pin such as PD2", p)
			}
		}
		for _, p := range t.Pins {
			if !pinRE.MatchString(p.Pin) {
				return bad("pin %q: want a port pin such as PB5", p.Pin)
			}
			period, tol := p.PeriodTolerance()
			if period <= 0 || tol <= 0 || tol >= period {
				return bad("pin %s: period = %q, tolerance = %q: want a period such as \"2000ms\" and a tolerance such as \"1%%\" or \"5ms\"", p.Pin, p.Period, p.Tolerance)
			}
		}
	}
	return nil
}

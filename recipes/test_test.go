package recipes

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

const testRecipeHead = `name = "t"
version = "1"
board = "arduino-uno"
toolchain = "avr-gcc-5.4"
sources = ["src/*.cpp"]
`

func TestParseTests(t *testing.T) {
	r, err := Parse("recipe.toml", []byte(testRecipeHead+`
[[test]]
name = "blinks"
for = "5s"
input = "x"
input_at = "1s"
adc = { A0 = 2000 }
drive = { PD2 = 1 }
[[test.pin]]
pin = "PB5"
period = "2000ms"
tolerance = "1%"
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Tests) != 1 {
		t.Fatalf("tests: %+v", r.Tests)
	}
	tc := r.Tests[0]
	period, tol := tc.Pins[0].PeriodTolerance()
	if tc.Duration() != 5*time.Second || tc.Start() != time.Second || period != 2*time.Second || tol != 20*time.Millisecond || tc.ADC["A0"] != 2000 {
		t.Fatalf("%+v: %v %v", tc, period, tol)
	}
	// Tests say how to check a build, not what to build: the
	// derivation (made of the recipe's JSON fields) does not hold them.
	if b, _ := json.Marshal(r); strings.Contains(string(b), "blinks") {
		t.Fatalf("the recipe's JSON holds its tests: %s", b)
	}
}

func TestParseTestsInvalid(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"[[test]]\nfor = \"1s\"\noutput = \"x\"\n", "missing name"},
		{"[[test]]\nname = \"a\"\noutput = \"x\"\n", "want a simulated time limit"},
		{"[[test]]\nname = \"a\"\nfor = \"1s\"\n", "expects nothing"},
		{"[[test]]\nname = \"a\"\nfor = \"1s\"\nmatch = [\"(\"]\n", "match \"(\""},
		{"[[test]]\nname = \"a\"\nfor = \"1s\"\ngolden = \"../x\"\n", "golden"},
		{"[[test]]\nname = \"a\"\nfor = \"1s\"\n[[test.pin]]\npin = \"PB5\"\nperiod = \"1s\"\n", "tolerance"},
		{"[[test]]\nname = \"a\"\nfor = \"1s\"\nfoo = 1\noutput = \"\"\n", "unknown key"},
	} {
		_, err := Parse("recipe.toml", []byte(testRecipeHead+c.body))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.body, err, c.want)
		}
	}
}

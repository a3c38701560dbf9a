package cli

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pinChanges parses kiln run's --pins lines ("   1000.022687 ms  PB5 0").
func pinChanges(t *testing.T, stderr, pin string) (at []time.Duration, levels []int) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*([0-9.]+) ms  ` + pin + ` ([01])$`)
	for _, m := range re.FindAllStringSubmatch(stderr, -1) {
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, time.Duration(ms*1e6))
		levels = append(levels, int(m[2][0]-'0'))
	}
	return at, levels
}

// TestRunBlinkUnoPins (must show 1): kiln run recipes/blink-uno --for 5s
// --pins PB5 shows PB5 toggling every 1000 ms of simulated time (±1%).
func TestRunBlinkUnoPins(t *testing.T) {
	t.Parallel()
	res := runKiln(t, nil, "run", "../../recipes/blink-uno", "--for", "5s", "--pins", "PB5")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	at, levels := pinChanges(t, res.stderr, "PB5")
	// The level at the start, setup's digitalWrite(HIGH), then a toggle
	// each second: at 1, 2, 3 and 4 s.
	if len(at) != 6 || at[0] != 0 || levels[0] != 0 {
		t.Fatalf("PB5 changes %v %v, want the start level and 5 toggles in 5 s:\n%s", at, levels, res.stderr)
	}
	for i := 2; i < len(at); i++ {
		d := at[i] - at[i-1]
		if d < 990*time.Millisecond || d > 1010*time.Millisecond {
			t.Errorf("PB5 toggle %d came %v after the one before, want 1000 ms ± 1%%", i, d)
		}
		if levels[i] == levels[i-1] {
			t.Errorf("PB5 change %d does not toggle: %v", i, levels)
		}
	}
	if !strings.Contains(res.stderr, "5.0000") || !regexp.MustCompile(`[0-9.]+x real time`).MatchString(res.stderr) {
		t.Errorf("no simulated time or ratio in the summary:\n%s", res.stderr)
	}
	if res.stdout != "" {
		t.Errorf("blink prints nothing on its UART, got %q", res.stdout)
	}
}

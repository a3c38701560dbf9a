package station_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/station"
)

func TestParseConfig(t *testing.T) {
	good := `
name = "line-a"
policy = "policy.toml"
log = "/var/log/kiln/audit.jsonl"
poll = "100ms"
[serial]
csv = "serials.csv"
[[target]]
board = "arduino-uno"
artifact = "fw/blink.hex"
watch = ["ports/uno-*"]
`
	c, err := station.ParseConfig([]byte(good), "/srv/line/STATION.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "/srv/line/policy.toml" || c.Log != "/var/log/kiln/audit.jsonl" || c.Serial.CSV != "/srv/line/serials.csv" ||
		c.Targets[0].Artifact != "/srv/line/fw/blink.hex" || c.Targets[0].Watch[0] != "/srv/line/ports/uno-*" ||
		c.State != filepath.Join("/srv/line", "STATION.state.json") {
		t.Errorf("paths not resolved against the file: %+v", c)
	}
	for name, bad := range map[string]string{
		"unknown key":  good + "\ncolour = \"red\"\n",
		"no target":    `name = "x"`,
		"no artifact":  "[[target]]\nboard = \"arduino-uno\"\nports = [\"/dev/ttyUSB0\"]\n",
		"no ports":     "[[target]]\nboard = \"arduino-uno\"\nartifact = \"a.hex\"\n",
		"bad duration": strings.Replace(good, `"100ms"`, `"soon"`, 1),
		"not toml":     "[[target",
	} {
		if _, err := station.ParseConfig([]byte(bad), "S.toml"); !errors.Is(err, station.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

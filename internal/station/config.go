package station

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is a STATION.toml file:
//
//	name = "line-a"                 # names the station in the log and the dashboard
//	operator = "alice"              # who runs it (default: the log's operator)
//	policy = "policy.toml"          # trust policy: refuses untrusted artifacts before any device I/O
//	log = "audit.jsonl"             # audit log (default: kiln's log)
//	log_key = "audit.key"           # minisign secret key sealing the log (default: kiln's)
//	state = "station.state.json"    # serial numbers handed out (default: beside this file)
//	poll = "250ms"                  # how often ports are looked for
//	timeout = "300ms"               # per-answer protocol timeout (default: the back end's)
//	tries = 10                      # sync attempts (default: the back end's)
//	grace = "30s"                   # how long jobs in flight may finish after an interrupt
//
//	[serial]
//	prefix = "KLN-"                 # serial numbers prefix + counter, zero-padded to width
//	start = 1
//	width = 6
//	# csv = "serials.csv"           # or: one serial number a line (first column; header "serial" skipped)
//
//	[keys]
//	ed25519 = true                  # a key pair per device: private key to the device, public key to the log
//
//	[[target]]                      # one per kind of board on the line
//	board = "arduino-uno"
//	artifact = "blink.hex"          # .hex, .elf or .bin (with address); signature in artifact.minisig
//	sig = ""                        # another signature file
//	group = "line-a"                # the policy's group
//	ports = ["/dev/ttyUSB0"]        # listed ports
//	watch = ["/run/kiln/uno-*"]     # globs: every path that appears is a board
//	usb = true                      # any USB serial port with the board's VID:PID
//
// Relative paths are relative to the file's directory.
type Config struct {
	Name     string `toml:"name"`
	Operator string `toml:"operator"`
	Policy   string `toml:"policy"`
	Log      string `toml:"log"`
	LogKey   string `toml:"log_key"`
	State    string `toml:"state"`
	Poll     string `toml:"poll"`
	Timeout  string `toml:"timeout"`
	Tries    int    `toml:"tries"`
	Grace    string `toml:"grace"`

	Serial SerialConfig `toml:"serial"`
	Keys   struct {
		Ed25519 bool `toml:"ed25519"`
	} `toml:"keys"`
	Targets []Target `toml:"target"`

	// Source is the file the configuration came from.
	Source string `toml:"-"`

	poll, timeout, grace time.Duration
}

// SerialConfig says where serial numbers come from.
type SerialConfig struct {
	Prefix string `toml:"prefix"`
	Start  int    `toml:"start"`
	Width  int    `toml:"width"`
	CSV    string `toml:"csv"`
}

// Target is what one kind of board on the line receives, and where such
// boards are found.
type Target struct {
	Board    string   `toml:"board"`
	Artifact string   `toml:"artifact"`
	Address  *uint32  `toml:"address"`
	Sig      string   `toml:"sig"`
	Group    string   `toml:"group"`
	Protocol string   `toml:"protocol"`
	Baud     int      `toml:"baud"`
	Ports    []string `toml:"ports"`
	Watch    []string `toml:"watch"`
	USB      bool     `toml:"usb"`
}

// ErrConfig marks a station file that cannot be used.
var ErrConfig = errors.New("bad station file")

// LoadConfig reads and checks a station file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig parses a station file; source names it and anchors its
// relative paths.
func ParseConfig(data []byte, source string) (*Config, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return nil, fmt.Errorf("station: %s: %w: %v", source, ErrConfig, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		return nil, fmt.Errorf("station: %s: %w: unknown key %s", source, ErrConfig, un[0])
	}
	c.Source = source
	bad := func(format string, a ...any) error {
		return fmt.Errorf("station: %s: %w: %s", source, ErrConfig, fmt.Sprintf(format, a...))
	}
	dur := func(name, s string, def time.Duration) (time.Duration, error) {
		if s == "" {
			return def, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return 0, bad("%s = %q: want a duration such as 250ms", name, s)
		}
		return d, nil
	}
	if c.poll, err = dur("poll", c.Poll, 250*time.Millisecond); err != nil {
		return nil, err
	}
	if c.poll == 0 {
		return nil, bad("poll must be more than 0")
	}
	if c.timeout, err = dur("timeout", c.Timeout, 0); err != nil {
		return nil, err
	}
	if c.grace, err = dur("grace", c.Grace, 30*time.Second); err != nil {
		return nil, err
	}
	if len(c.Targets) == 0 {
		return nil, bad("no [[target]]: say which artifact goes to which board")
	}
	for i, t := range c.Targets {
		switch {
		case t.Board == "":
			return nil, bad("target %d: missing board", i+1)
		case t.Artifact == "":
			return nil, bad("target %d (%s): missing artifact", i+1, t.Board)
		case len(t.Ports) == 0 && len(t.Watch) == 0 && !t.USB:
			return nil, bad("target %d (%s): no ports, watch or usb: where are the boards?", i+1, t.Board)
		}
	}
	if c.Serial.CSV == "" && c.Serial.Width < 0 {
		return nil, bad("serial width %d", c.Serial.Width)
	}
	dir := filepath.Dir(source)
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Policy)
	abs(&c.Log)
	abs(&c.LogKey)
	abs(&c.State)
	abs(&c.Serial.CSV)
	for i := range c.Targets {
		t := &c.Targets[i]
		abs(&t.Artifact)
		abs(&t.Sig)
		for j := range t.Watch {
			abs(&t.Watch[j])
		}
	}
	if c.State == "" {
		base := filepath.Base(source)
		c.State = filepath.Join(dir, base[:len(base)-len(filepath.Ext(base))]+".state.json")
	}
	if c.Name == "" {
		c.Name = filepath.Base(source)
	}
	return &c, nil
}

// Package fleet rolls an image out to many devices the way a robot fleet
// needs it: declared per group, in waves (a canary first, then growing
// fractions), only inside each device's update window, with bounded
// parallelism, and halted as soon as failures reach a threshold. Status
// compares what every device runs, read from the device, with what the fleet
// file declares.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/BurntSushi/toml"

	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// File is a fleet file (FLEET.toml).
type File struct {
	SSHKey      string   `toml:"ssh_key"`
	KnownHosts  string   `toml:"known_hosts"`
	Health      string   `toml:"health"`       // default health check command
	Window      string   `toml:"window"`       // update-window command: non-zero exit defers the device
	Parallel    int      `toml:"parallel"`     // jobs at once; default 4
	MaxFailures int      `toml:"max_failures"` // halt when this many devices failed; default 1
	Waves       []any    `toml:"waves"`        // integers: device counts; fractions: cumulative share of the fleet
	BootTimeout Duration `toml:"boot_timeout"`
	// Verify: a device whose slot claims the declared image counts as
	// current only if its bytes, hashed on the device, are the image's.
	Verify  bool     `toml:"verify"`
	Groups  []Group  `toml:"group"`
	Devices []Device `toml:"device"`

	dir string
}

// Group says which image its devices run: an image file, or an image
// recipe that Resolve builds (once per derivation, into the store).
type Group struct {
	Name   string `toml:"name"`
	Image  string `toml:"image"`  // an .img with kiln's A/B layout, relative to the fleet file
	Recipe string `toml:"recipe"` // or an image recipe directory, relative to the fleet file
	Health string `toml:"health"`
	// Board is the image's board (its kiln.json), when the caller read it
	// (internal/op does): a device that runs an image for another board
	// is refused, that device only.
	Board string `toml:"-"`
}

// Builder builds an image recipe and returns the path of its image.img.
type Builder func(ctx context.Context, recipeDir string) (string, error)

// StoreBuilder builds image recipes into the store, one entry per
// derivation: a fleet file that names a recipe costs one build, and every
// later deploy or status a store lookup. The entry holds image.img, its
// bmap and manifest, not the .img.xz: updates read the image itself.
func StoreBuilder(s *store.Store, log func(string, ...any)) Builder {
	return StoreBuilderWith(s, log, nil)
}

// StoreBuilderWith is StoreBuilder asking substitute (a binary cache, see
// recipebuild.Options.Substitute) for an image before building it.
func StoreBuilderWith(s *store.Store, log func(string, ...any), substitute func(ctx context.Context, key, name string) (string, bool)) Builder {
	return func(ctx context.Context, dir string) (string, error) {
		r, err := recipes.Load(dir)
		if err != nil {
			return "", err
		}
		if r.Kind != recipes.KindImage {
			return "", fmt.Errorf("%s is a %s recipe; a fleet group needs an image recipe", r.File, r.Kind)
		}
		_, rz, err := recipebuild.Realise(ctx, dir, recipebuild.Options{Store: s, NoXZ: true, Log: log, Substitute: substitute})
		if err != nil {
			return "", err
		}
		p := rz.Path
		return filepath.Join(p, image.ImageFile), nil
	}
}

// Resolve gives every group that names a recipe the image built from it.
func (f *File) Resolve(ctx context.Context, build Builder) error {
	for i, g := range f.Groups {
		if g.Recipe == "" {
			continue
		}
		img, err := build(ctx, f.path(g.Recipe))
		if err != nil {
			return fmt.Errorf("group %s: %w", g.Name, err)
		}
		f.Groups[i].Image = img
	}
	return nil
}

// Device is one robot.
type Device struct {
	Name  string `toml:"name"`
	URL   string `toml:"url"` // ssh://user@host[:port]/dev/mmcblk0
	Group string `toml:"group"`
}

// Duration is a TOML string such as "90s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	d.Duration = v
	return err
}

// Load reads and validates a fleet file.
func Load(path string) (*File, error) {
	var f File
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("%s:%d:%d: %s", path, perr.Position.Line, perr.Position.Col, perr.Message)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("%s: unknown key %q", path, und[0].String())
	}
	f.dir = filepath.Dir(path)
	if f.Parallel <= 0 {
		f.Parallel = 4
	}
	if f.MaxFailures <= 0 {
		f.MaxFailures = 1
	}
	if len(f.Waves) == 0 {
		f.Waves = []any{int64(1), 1.0}
	}
	groups := map[string]bool{}
	for _, g := range f.Groups {
		if g.Name == "" || (g.Image == "") == (g.Recipe == "") {
			return nil, fmt.Errorf("%s: every group needs a name and either image or recipe", path)
		}
		groups[g.Name] = true
	}
	seen := map[string]bool{}
	for _, d := range f.Devices {
		if d.Name == "" || seen[d.Name] {
			return nil, fmt.Errorf("%s: device names must be present and unique (%q)", path, d.Name)
		}
		seen[d.Name] = true
		if !groups[d.Group] {
			return nil, fmt.Errorf("%s: device %s: unknown group %q", path, d.Name, d.Group)
		}
		if _, err := ssh.ParseAddr(d.URL); err != nil {
			return nil, fmt.Errorf("%s: device %s: %w", path, d.Name, err)
		}
	}
	if _, err := f.plan(len(f.Devices)); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// plan turns Waves into cumulative device counts for n devices.
func (f *File) plan(n int) ([]int, error) {
	var out []int
	prev := 0
	for _, w := range f.Waves {
		var k int
		switch v := w.(type) {
		case int64:
			k = prev + int(v)
		case float64:
			if v <= 0 || v > 1 {
				return nil, fmt.Errorf("wave %v: a fraction must be in (0, 1]", v)
			}
			k = int(math.Ceil(v * float64(n)))
		default:
			return nil, fmt.Errorf("wave %v: want a device count or a fraction", w)
		}
		k = min(max(k, prev), n)
		if k > prev {
			out = append(out, k)
		}
		prev = k
	}
	if prev < n {
		out = append(out, n)
	}
	return out, nil
}

// Path resolves p as the fleet file does (relative to its directory).
func (f *File) Path(p string) string { return f.path(p) }

func (f *File) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(f.dir, p)
}

func (f *File) group(name string) Group {
	for _, g := range f.Groups {
		if g.Name == name {
			return g
		}
	}
	return Group{}
}

func (f *File) dialer(d Device) (ssh.Dialer, string, error) {
	a, err := ssh.ParseAddr(d.URL)
	if err != nil {
		return nil, "", err
	}
	opts := ssh.Options{KnownHosts: f.path(f.KnownHosts), Timeout: 10 * time.Second}
	if f.SSHKey != "" {
		opts.KeyFiles = []string{f.path(f.SSHKey)}
	}
	return ssh.DialerFor(a, opts), a.Path, nil
}

// DeviceStatus is one line of `kiln fleet status`.
type DeviceStatus struct {
	Name     string `json:"name"`
	Group    string `json:"group"`
	Declared string `json:"declared"`
	Running  string `json:"running,omitempty"`
	Slot     string `json:"slot,omitempty"`
	Trial    bool   `json:"trial,omitempty"`
	Drift    bool   `json:"drift"`
	Error    string `json:"error,omitempty"`
	// With verify, for devices whose slot claims the declared image: "match"
	// or "mismatch" of the running slot's bytes, hashed on the device,
	// against the declared image's; and the device's root hash.
	Proof      string `json:"proof,omitempty"`
	RootSHA256 string `json:"root_sha256,omitempty"`
}

// Status asks every device what it runs. With verify it also proves it:
// a device whose slot claims the declared image has its running root and
// boot partitions hashed on the device and compared with the image's.
func (f *File) Status(ctx context.Context, verify bool) ([]DeviceStatus, error) {
	declared := map[string]string{}
	for _, g := range f.Groups {
		if g.Image == "" {
			return nil, fmt.Errorf("group %s: recipe %s is not built yet (Resolve)", g.Name, g.Recipe)
		}
		drv, err := sshdev.ImageDerivation(f.path(g.Image))
		if err != nil {
			return nil, fmt.Errorf("group %s: %w", g.Name, err)
		}
		declared[g.Name] = drv
	}
	out := make([]DeviceStatus, len(f.Devices))
	var wg sync.WaitGroup
	sem := make(chan struct{}, f.Parallel)
	for i, d := range f.Devices {
		out[i] = DeviceStatus{Name: d.Name, Group: d.Group, Declared: declared[d.Group]}
		wg.Add(1)
		go func(s *DeviceStatus, d Device) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			dial, disk, err := f.dialer(d)
			if err == nil {
				var st *sshdev.Status
				if st, err = sshdev.Inspect(ctx, dial, d.Name, disk); err == nil {
					s.Running, s.Slot, s.Trial = st.Derivation, st.Running, st.Trial
				}
				if err == nil && verify && s.Running == s.Declared {
					var chk *sshdev.SlotCheck
					if chk, err = sshdev.Check(ctx, dial, d.Name, disk, f.path(f.group(d.Group).Image)); err == nil {
						s.Proof, s.RootSHA256 = "mismatch", chk.RootSHA256
						if chk.Match {
							s.Proof = "match"
						}
					}
				}
			}
			if err != nil {
				s.Error = err.Error()
			}
			s.Drift = s.Running != s.Declared || s.Proof == "mismatch"
		}(&out[i], d)
	}
	wg.Wait()
	return out, nil
}

// Outcome of one device in a rollout.
const (
	Updated  = "updated"
	Current  = "current"  // already ran the declared image
	Deferred = "deferred" // outside its update window
	Failed   = "failed"
	Skipped  = "skipped" // the rollout halted before its wave
)

// DeviceResult is what a rollout did to one device.
type DeviceResult struct {
	Name      string  `json:"name"`
	Wave      int     `json:"wave"`
	Outcome   string  `json:"outcome"`
	Error     string  `json:"error,omitempty"`
	BytesSent int64   `json:"bytes_sent,omitempty"`
	Seconds   float64 `json:"seconds,omitempty"`
}

// Report is the result of a rollout.
type Report struct {
	Devices []DeviceResult `json:"devices"`
	Waves   []int          `json:"waves"` // cumulative device counts
	Halted  bool           `json:"halted"`
	Failed  int            `json:"failed"`
}

// ErrHalted means the rollout stopped at its failure threshold.
var ErrHalted = errors.New("rollout halted")

// Deploy rolls the declared images out in waves.
func (f *File) Deploy(ctx context.Context, helperDir string, log func(string, ...any)) (*Report, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	waves, err := f.plan(len(f.Devices))
	if err != nil {
		return nil, err
	}
	rep := &Report{Waves: waves, Devices: make([]DeviceResult, len(f.Devices))}
	for i, d := range f.Devices {
		rep.Devices[i] = DeviceResult{Name: d.Name, Outcome: Skipped}
	}
	var mu sync.Mutex
	prev := 0
	for w, upto := range waves {
		log("wave %d: devices %d-%d", w+1, prev+1, upto)
		var wg sync.WaitGroup
		sem := make(chan struct{}, f.Parallel)
		for i := prev; i < upto; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				mu.Lock()
				halted := rep.Halted
				mu.Unlock()
				if halted {
					return
				}
				r := f.deployOne(ctx, f.Devices[i], helperDir, log)
				r.Wave = w + 1
				mu.Lock()
				rep.Devices[i] = r
				if r.Outcome == Failed {
					rep.Failed++
					if rep.Failed >= f.MaxFailures && !rep.Halted {
						rep.Halted = true
						log("halting the rollout: %d failure(s) reached the threshold %d", rep.Failed, f.MaxFailures)
					}
				}
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		if rep.Halted {
			return rep, fmt.Errorf("%w after wave %d: %d device(s) failed (threshold %d)", ErrHalted, w+1, rep.Failed, f.MaxFailures)
		}
		prev = upto
	}
	if rep.Failed > 0 {
		return rep, fmt.Errorf("%d device(s) failed", rep.Failed)
	}
	return rep, nil
}

func (f *File) deployOne(ctx context.Context, d Device, helperDir string, log func(string, ...any)) (out DeviceResult) {
	start := time.Now()
	res := DeviceResult{Name: d.Name}
	fail := func(err error) DeviceResult {
		res.Outcome, res.Error = Failed, err.Error()
		res.Seconds = time.Since(start).Seconds()
		log("%s: failed: %v", d.Name, err)
		return res
	}
	// One device's answers, however hostile, end that device's rollout
	// only: a bug they trigger is its failure, not the fleet's crash.
	defer func() {
		if p := recover(); p != nil {
			out = fail(fmt.Errorf("internal error on this device's answers: %v", p))
		}
	}()
	g := f.group(d.Group)
	img := f.path(g.Image)
	want, err := sshdev.ImageDerivation(img)
	if err != nil {
		return fail(err)
	}
	dial, disk, err := f.dialer(d)
	if err != nil {
		return fail(err)
	}
	st, err := sshdev.Inspect(ctx, dial, d.Name, disk)
	if err != nil {
		return fail(err)
	}
	if g.Board != "" && st.Board != "" && st.Board != g.Board {
		return fail(fmt.Errorf("%s runs an image for %s; group %s's image is for %s: refused before writing", d.Name, st.Board, g.Name, g.Board))
	}
	if st.Derivation == want && !st.Trial {
		if !f.Verify {
			res.Outcome = Current
			return res
		}
		chk, err := sshdev.Check(ctx, dial, d.Name, disk, img)
		if err != nil {
			return fail(err)
		}
		if chk.Match {
			res.Outcome = Current
			return res
		}
		log("%s: slot %s claims the declared image but its bytes differ (root sha256 %s, want %s); updating", d.Name, chk.Slot, chk.RootSHA256, chk.WantRoot)
	}
	if f.Window != "" {
		c, err := dial(ctx)
		if err != nil {
			return fail(err)
		}
		werr := c.Run(ctx, f.Window, nil, nil)
		c.Close()
		if werr != nil {
			res.Outcome, res.Error = Deferred, "outside its update window"
			log("%s: deferred (update window: %v)", d.Name, werr)
			return res
		}
	}
	health := g.Health
	if health == "" {
		health = f.Health
	}
	ur, err := sshdev.Update(ctx, dial, d.Name, img, sshdev.UpdateOptions{Disk: disk, Health: health, HelperDir: helperDir, BootTimeout: f.BootTimeout.Duration, Log: log})
	if errors.Is(err, sshdev.ErrBusy) {
		res.Outcome, res.Error = Deferred, err.Error()
		log("%s: deferred (%v)", d.Name, err)
		return res
	}
	if err != nil {
		return fail(err)
	}
	res.Outcome, res.BytesSent, res.Seconds = Updated, ur.BytesSent, time.Since(start).Seconds()
	log("%s: updated to slot %s (%d bytes sent)", d.Name, ur.To, ur.BytesSent)
	return res
}

// Sorted returns results in fleet-file order by name, for stable output.
func Sorted(rs []DeviceResult) []DeviceResult {
	out := append([]DeviceResult(nil), rs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Wave < out[j].Wave })
	return out
}

// helperDirDefault is where kiln-helper-<arch> files sit: next to the kiln binary.
func HelperDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Dir(exe)
}

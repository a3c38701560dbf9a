package debian

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Errors Resolve returns (wrapped, with apt's own explanation).
var (
	// ErrAPT: apt could not update its indexes or failed in another way.
	ErrAPT = errors.New("apt failed")
	// ErrNoPackage: a requested package is in none of the indexes.
	ErrNoPackage = errors.New("no such package")
	// ErrUnsatisfiable: apt cannot install the request (broken or
	// conflicting dependencies).
	ErrUnsatisfiable = errors.New("dependencies cannot be satisfied")
	// ErrNoSuite: a suite is not among the host's apt sources.
	ErrNoSuite = errors.New("suite not in the host's apt sources")
)

// Resolver runs apt's own resolver for a foreign architecture, with apt
// state of its own: the host's dpkg database, apt lists and configuration
// are neither read (beyond its sources' URIs) nor written.
type Resolver struct {
	// Dir holds the private apt states, one per source list (created).
	Dir string
	// APTGet and APTCache are the programs; "" means apt-get, apt-cache.
	APTGet, APTCache string
	// Now is the clock for the lock's resolution time; nil means time.Now.
	Now func() time.Time
	// Log receives progress lines; it may be nil.
	Log func(format string, args ...any)
}

func (r *Resolver) logf(format string, a ...any) {
	if r.Log != nil {
		r.Log(format, a...)
	}
}

// Resolve updates the indexes the request names and asks apt what it
// would install, on an empty system of req.Arch, for the request: the
// returned lock holds every package of that closure in apt's order.
func (r *Resolver) Resolve(ctx context.Context, req Request) (*Lock, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	sources, err := r.sourcesList(ctx, req)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(req.Arch + "\n" + sources))
	dir := filepath.Join(r.Dir, "apt-"+hex.EncodeToString(sum[:8]))
	conf, err := writeAptState(dir, req.Arch, sources)
	if err != nil {
		return nil, fmt.Errorf("lock: apt state: %w", err)
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	resolved := now().UTC().Truncate(time.Second)
	r.logf("apt-get update (%s, %s)", req.Arch, strings.Join(req.Suites, " "))
	if out, err := r.apt(ctx, conf, "apt-get", "update", "-q"); err != nil {
		return nil, fmt.Errorf("lock: %w: apt-get update: %s", ErrAPT, aptErrors(out, err))
	}
	released, err := ReleaseDate(filepath.Join(dir, "lists"))
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	args := append([]string{"install", "-q", "--simulate", "--no-install-recommends"}, req.Packages...)
	if req.Essential {
		args = append(args, EssentialPattern(req.Suites[0], req.Arch))
	}
	out, err := r.apt(ctx, conf, "apt-get", args...)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", classify(out, err))
	}
	ids := parseInst(out)
	if len(ids) == 0 {
		return nil, fmt.Errorf("lock: %w: apt would install nothing", ErrAPT)
	}
	base := map[string]bool{}
	if req.Essential {
		// The essential set's own closure is what mmdebstrap installs
		// first, with dpkg alone; the rest comes on top.
		out, err := r.apt(ctx, conf, "apt-get", "install", "-q", "--simulate", EssentialPattern(req.Suites[0], req.Arch))
		if err != nil {
			return nil, fmt.Errorf("lock: essential set: %w", classify(out, err))
		}
		for _, id := range parseInst(out) {
			base[id] = true
		}
	}
	uris, err := r.apt(ctx, conf, "apt-get", append([]string{"install", "-qq", "--print-uris", "--no-install-recommends"}, args[4:]...)...)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", classify(uris, err))
	}
	show, err := r.apt(ctx, conf, "apt-cache", append([]string{"show", "-q"}, ids...)...)
	if err != nil {
		return nil, fmt.Errorf("lock: %w: apt-cache show: %s", ErrAPT, aptErrors(show, err))
	}
	meta := parseStanzas(show)
	uriOf := repoURIs(uris)
	l := &Lock{Format: LockFormat, Resolved: resolved, Snapshot: SnapshotTime(released), Request: req, RequestHash: req.Hash()}
	for _, id := range ids {
		p, ok := meta[id]
		if !ok {
			return nil, fmt.Errorf("lock: %w: apt-cache show gave no record of %s", ErrAPT, id)
		}
		if strings.HasPrefix(req.Mirror, "file:") {
			// apt reports local repositories' file names as absolute paths.
			p.Filename = strings.TrimPrefix(p.Filename, strings.TrimSuffix(strings.TrimPrefix(req.Mirror, "file:"), "/")+"/")
		}
		if req.Mirror == "" {
			if uri, ok := uriOf[path.Base(p.Filename)]; ok {
				p.Archive = ArchiveOf(uri, p.Filename)
			}
		}
		// Without the essential set, the whole closure is installed at
		// once with dpkg, as mmdebstrap's custom variant does.
		p.Base = base[id] || !req.Essential
		l.Packages = append(l.Packages, p)
	}
	if _, err := ParseLock(l.Marshal()); err != nil {
		return nil, fmt.Errorf("lock: apt gave %w", err)
	}
	return l, nil
}

// EssentialPattern is the apt pattern mmdebstrap installs for its
// essential variant: the suite's Essential: yes packages of the architecture.
func EssentialPattern(suite, arch string) string {
	return "?narrow(?or(?archive(^" + suite + "$),?codename(^" + suite + "$)),?architecture(" + arch + "),?essential)"
}

// sourcesList is the private sources.list: the request's mirror, or for
// each suite the URI the host's apt sources give it.
func (r *Resolver) sourcesList(ctx context.Context, req Request) (string, error) {
	var b strings.Builder
	comps := strings.Join(req.Components, " ")
	if req.Mirror != "" {
		opts := "arch=" + req.Arch
		if req.Trusted {
			opts += " trusted=yes"
		}
		for _, s := range req.Suites {
			fmt.Fprintf(&b, "deb [%s] %s %s %s\n", opts, req.Mirror, s, comps)
		}
		return b.String(), nil
	}
	cmd := exec.CommandContext(ctx, r.prog("apt-get"), "indextargets", "--format", "$(REPO_URI) $(RELEASE)", "Created-By: Packages")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("lock: %w: apt-get indextargets on the host: %v", ErrAPT, err)
	}
	uri := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if u, s, ok := strings.Cut(strings.TrimSpace(line), " "); ok && uri[s] == "" {
			uri[s] = u
		}
	}
	opts := "arch=" + req.Arch
	if _, err := os.Stat(debianKeyring); err == nil {
		opts += " signed-by=" + debianKeyring
	}
	for _, s := range req.Suites {
		u, ok := uri[s]
		if !ok {
			return "", fmt.Errorf("lock: %w: %s (the host's apt sources have no index of it; run apt-get update, add it, or set the recipe's mirror)", ErrNoSuite, s)
		}
		fmt.Fprintf(&b, "deb [%s] %s %s %s\n", opts, u, s, comps)
	}
	return b.String(), nil
}

const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// writeAptState makes dir an apt root of its own and returns its apt.conf
// (given to apt as APT_CONFIG): no configuration of the host is read.
func writeAptState(dir, arch, sources string) (string, error) {
	for _, d := range []string{"lists/partial", "cache/archives/partial", "etc/parts", "etc/preferences.d", "etc/sources.list.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	// A package cache made under other settings (ForceEssential) must not
	// be reused: apt checks only the lists' times.
	for _, c := range []string{"pkgcache.bin", "srcpkgcache.bin"} {
		if err := os.Remove(filepath.Join(dir, "cache", c)); err != nil && !os.IsNotExist(err) {
			return "", err
		}
	}
	files := map[string]string{"status": "", "etc/sources.list": sources, "etc/preferences": ""}
	conf := map[string]string{
		"Dir::Etc::main": "/dev/null", "Dir::Etc::parts": dir + "/etc/parts",
		"Dir::Etc::SourceList": dir + "/etc/sources.list", "Dir::Etc::SourceParts": dir + "/etc/sources.list.d",
		"Dir::Etc::Preferences": dir + "/etc/preferences", "Dir::Etc::PreferencesParts": dir + "/etc/preferences.d",
		"Dir::State": dir, "Dir::State::Lists": dir + "/lists", "Dir::State::status": dir + "/status",
		"Dir::Cache": dir + "/cache", "APT::Architecture": arch,
		"APT::Install-Recommends": "false", "APT::Install-Suggests": "false",
		"Acquire::Languages": "none", "Debug::NoLocking": "1",
		// apt counts itself essential (ForceEssential defaults to "apt"),
		// so ?essential would pull apt and its closure into the essential
		// set; mmdebstrap's essential variant turns that off the same way.
		"pkgCacheGen::ForceEssential": ",",
	}
	if os.Geteuid() == 0 {
		// _apt cannot write into a private directory under /tmp or the store.
		conf["APT::Sandbox::User"] = "root"
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s;\n", k, strconv.Quote(conf[k]))
	}
	fmt.Fprintf(&b, "APT::Architectures { %s; };\n", strconv.Quote(arch))
	files["apt.conf"] = b.String()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, "apt.conf"), nil
}

func (r *Resolver) prog(name string) string {
	switch {
	case name == "apt-get" && r.APTGet != "":
		return r.APTGet
	case name == "apt-cache" && r.APTCache != "":
		return r.APTCache
	}
	return name
}

// apt runs apt-get or apt-cache with the private configuration.
func (r *Resolver) apt(ctx context.Context, conf, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, r.prog(prog), args...)
	cmd.Env = append(os.Environ(), "APT_CONFIG="+conf, "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), ctx.Err()
	}
	return out.String(), err
}

// aptErrors keeps apt's E: and W: lines (its explanation), or its last line.
func aptErrors(out string, err error) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") || strings.HasPrefix(l, "Err:") {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	if len(keep) == 0 {
		return fmt.Sprintf("%v: %s", err, lastLine(out))
	}
	return strings.Join(keep, "; ")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

var (
	unlocatableRE = regexp.MustCompile(`E: (Unable to locate package \S+|Package '[^']+' has no installation candidate|Couldn't find any package by .*)`)
)

// classify turns a failed apt-get install into ErrNoPackage or
// ErrUnsatisfiable, keeping apt's explanation.
func classify(out string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if m := unlocatableRE.FindAllStringSubmatch(out, -1); m != nil {
		var names []string
		for _, x := range m {
			names = append(names, x[1])
		}
		return fmt.Errorf("%w: %s", ErrNoPackage, strings.Join(names, "; "))
	}
	if i := strings.Index(out, "The following packages have unmet dependencies:"); i >= 0 {
		var why []string
		for _, l := range strings.Split(out[i:], "\n")[1:] {
			if t := strings.TrimSpace(l); t != "" {
				why = append(why, t)
			}
		}
		return fmt.Errorf("%w: %s", ErrUnsatisfiable, strings.Join(why, "; "))
	}
	return fmt.Errorf("%w: apt-get install: %s", ErrAPT, aptErrors(out, err))
}

// instRE matches apt-get --simulate's "Inst NAME [OLD] (VERSION ARCHIVES [ARCH])".
var instRE = regexp.MustCompile(`^Inst (\S+) (?:\[[^]]*\] )?\((\S+) .*\[([^]]+)\]\)`)

// parseInst returns name:arch=version of each Inst line, in order.
func parseInst(out string) []string {
	var ids []string
	for _, l := range strings.Split(out, "\n") {
		if m := instRE.FindStringSubmatch(l); m != nil {
			name, _, _ := strings.Cut(m[1], ":")
			ids = append(ids, name+":"+m[3]+"="+m[2])
		}
	}
	return ids
}

// ArchiveOf names the archive a package URI is in: the last path element
// before the pool path ("debian", "debian-security").
func ArchiveOf(uri, filename string) string {
	return path.Base(strings.TrimSuffix(strings.TrimSuffix(uri, filename), "/"))
}

// repoURIs maps a .deb file name to the URI --print-uris gave it.
func repoURIs(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasPrefix(f[0], "'") {
			uri := strings.Trim(f[0], "'")
			if u, err := url.PathUnescape(uri); err == nil {
				uri = u // apt escapes '+' and the epoch's ':' in URIs
			}
			m[path.Base(uri)] = uri
		}
	}
	return m
}

// parseStanzas reads apt-cache show output into packages, by ID.
func parseStanzas(out string) map[string]Package {
	m := map[string]Package{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var p Package
	flush := func() {
		if p.Name != "" {
			if p.Source == "" {
				p.Source = p.Name
			}
			if p.SourceVersion == "" {
				p.SourceVersion = p.Version
			}
			if _, dup := m[p.ID()]; !dup {
				m[p.ID()] = p
			}
		}
		p = Package{}
	}
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			flush()
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "Source":
			src, ver, _ := strings.Cut(v, " ")
			p.Source = src
			p.SourceVersion = strings.Trim(ver, "()")
		case "Filename":
			p.Filename = v
		case "Size":
			p.Size, _ = strconv.ParseInt(v, 10, 64)
		case "SHA256":
			p.SHA256 = v
		case "Essential":
			p.Essential = v == "yes"
		}
	}
	flush()
	return m
}

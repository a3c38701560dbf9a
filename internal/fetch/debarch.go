package fetch

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"kiln.dev/kiln/recipes"
)

// aptStates are the private apt state directories made in this process, by
// directory: one apt-get update per architecture, source list and store.
var aptStates sync.Map // dir → *aptState

type aptState struct {
	once sync.Once
	err  error
}

// HostSources is where the host's apt source lists are read from when a
// deb: source names suites or components: /etc/apt, or $KILN_APT_SOURCES (a
// directory laid out like it: sources.list, sources.list.d/). When it is
// not /etc/apt, every deb: source is fetched through a private apt state
// with a source list made from it.
var HostSources = func() string {
	if d := os.Getenv("KILN_APT_SOURCES"); d != "" {
		return d
	}
	return "/etc/apt"
}()

// debArch handles a deb: source the host's own apt state cannot serve: a
// foreign architecture ("deb:NAME:ARCH=VERSION", arm64 kernels for Raspberry
// Pi images on an amd64 host) or other suites and components
// ("…@bookworm/non-free-firmware", Debian's Pi firmware). apt gets its own
// state and cache directory under the store root, configured for that
// architecture alone and, when suites or components are named, with its own
// source list made from the host's mirrors with those suites and components;
// it is updated once per process and then used for apt-get download. The
// host's dpkg and apt state are never touched. It returns the extra apt-get
// options and the NAME=VERSION spec; a plain NAME=VERSION (or the host's own
// architecture, with no suites or components) gets no options.
func (f *Fetcher) debArch(ctx context.Context, src string) ([]string, string, error) {
	d, err := recipes.ParseDebSource(src)
	if err != nil {
		return nil, "", err
	}
	host := ""
	if out, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil {
		host = strings.TrimSpace(string(out))
	}
	arch := d.Arch
	if arch == "" {
		arch = host
	}
	where := len(d.Suites)+len(d.Components) > 0 || HostSources != "/etc/apt"
	if arch == host && !where {
		return nil, d.Spec(), nil
	}
	opts, _, err := f.privateAPT(ctx, arch, d.Suites, d.Components, where)
	if err != nil {
		return nil, "", err
	}
	return opts, d.Spec(), nil
}

// privateAPT makes (once per process) and updates an apt state of its own
// under the store root for arch: with withList, a source list made from
// the host's sources narrowed to suites and components; without, apt
// reads the host's source list itself. It returns apt-get/apt-cache options and the state's
// lists directory.
func (f *Fetcher) privateAPT(ctx context.Context, arch string, suites, components []string, withList bool) ([]string, string, error) {
	apt := f.APTGet
	if apt == "" {
		apt = "apt-get"
	}
	name := ".apt-" + arch
	var list string
	if withList {
		var err error
		if list, err = privateSourceList(HostSources, suites, components); err != nil {
			return nil, "", err
		}
		sum := sha256.Sum256([]byte(list))
		name += "-" + hex.EncodeToString(sum[:6])
	}
	dir := filepath.Join(f.Store.Root, name)
	for _, sub := range []string{"lists/partial", "cache/archives/partial", "sources.list.d"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, "", err
		}
	}
	status := filepath.Join(dir, "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return nil, "", err
		}
	}
	lists := filepath.Join(dir, "lists")
	opts := []string{
		"-o", "Dir::State=" + dir, "-o", "Dir::State::Lists=" + lists,
		"-o", "Dir::State::status=" + status, "-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "APT::Architecture=" + arch, "-o", "APT::Architectures::=" + arch,
		"-o", "Debug::NoLocking=1",
	}
	if withList {
		sl := filepath.Join(dir, "sources.list")
		if err := os.WriteFile(sl, []byte(list), 0o644); err != nil {
			return nil, "", err
		}
		opts = append(opts, "-o", "Dir::Etc::SourceList="+sl, "-o", "Dir::Etc::SourceParts="+filepath.Join(dir, "sources.list.d"))
	}
	if os.Geteuid() == 0 {
		opts = append(opts, "-o", "APT::Sandbox::User=root")
	}
	v, _ := aptStates.LoadOrStore(dir, &aptState{})
	st := v.(*aptState)
	st.once.Do(func() {
		f.logf("apt-get update for %s (private state %s)", arch, dir)
		cmd := exec.CommandContext(ctx, apt, append(append([]string{}, opts...), "-q", "update")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			st.err = fmt.Errorf("%w: apt-get update for %s (%v): %s", ErrAPT, arch, err, lastLine(string(out)))
		}
	})
	if st.err != nil {
		return nil, "", st.err
	}
	return opts, lists, nil
}

// aptSource is one "deb" entry of an apt source list.
type aptSource struct {
	URIs, Suites, Components []string
	SignedBy                 string
	// Trusted is the host's own trusted=yes (a local repository without
	// signatures): the private list keeps the host's decision.
	Trusted bool
}

// privateSourceList makes a one-line-style source list from the host's
// Debian entries (sources.list, sources.list.d/*.list and *.sources under
// etc): the same mirrors and keys, with the suites narrowed to suites (all
// of the host's when empty) and the components replaced by components (the
// host's when empty). Entries without any of the named suites are left out.
func privateSourceList(etc string, suites, components []string) (string, error) {
	var all []aptSource
	files := []string{filepath.Join(etc, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(etc, "sources.list.d", "*"))
	files = append(files, more...)
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(p, ".sources"):
			all = append(all, parseDeb822Sources(string(b))...)
		case strings.HasSuffix(p, ".list"):
			all = append(all, parseOneLineSources(string(b))...)
		}
	}
	want := map[string]bool{}
	for _, s := range suites {
		want[s] = true
	}
	var w strings.Builder
	for _, s := range all {
		comps := s.Components
		if len(components) > 0 {
			comps = components
		}
		for _, suite := range s.Suites {
			if len(want) > 0 && !want[suite] {
				continue
			}
			for _, uri := range s.URIs {
				var o []string
				if s.SignedBy != "" {
					o = append(o, "signed-by="+s.SignedBy)
				}
				if s.Trusted {
					o = append(o, "trusted=yes")
				}
				opt := ""
				if len(o) > 0 {
					opt = "[" + strings.Join(o, " ") + "] "
				}
				fmt.Fprintf(&w, "deb %s%s %s %s\n", opt, uri, suite, strings.Join(comps, " "))
			}
		}
	}
	if w.Len() == 0 {
		return "", fmt.Errorf("%w: no apt source of the host (%s) has suite %s", ErrAPT, etc, strings.Join(suites, ","))
	}
	return w.String(), nil
}

func parseDeb822Sources(text string) []aptSource {
	var out []aptSource
	for _, para := range strings.Split(strings.ReplaceAll(text, "\r", ""), "\n\n") {
		fields := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(para))
		key := ""
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
				continue
			}
			if (line[0] == ' ' || line[0] == '\t') && key != "" {
				fields[key] += " " + strings.TrimSpace(line)
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			key = strings.ToLower(strings.TrimSpace(k))
			fields[key] = strings.TrimSpace(v)
		}
		if !slices.Contains(strings.Fields(fields["types"]), "deb") || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		signed := fields["signed-by"]
		if strings.Contains(signed, " ") { // an inline key: keep the host's keyrings instead
			signed = ""
		}
		out = append(out, aptSource{URIs: strings.Fields(fields["uris"]), Suites: strings.Fields(fields["suites"]),
			Components: strings.Fields(fields["components"]), SignedBy: signed, Trusted: strings.EqualFold(fields["trusted"], "yes")})
	}
	return out
}

func parseOneLineSources(text string) []aptSource {
	var out []aptSource
	for _, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		s := aptSource{}
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 {
				opt := strings.Trim(f[0], "[]")
				switch k, v, _ := strings.Cut(opt, "="); k {
				case "signed-by":
					s.SignedBy = v
				case "trusted":
					s.Trusted = v == "yes"
				}
				end := strings.HasSuffix(f[0], "]")
				f = f[1:]
				if end {
					break
				}
			}
		}
		if len(f) < 2 {
			continue
		}
		s.URIs, s.Suites, s.Components = f[:1], f[1:2], f[2:]
		out = append(out, s)
	}
	return out
}

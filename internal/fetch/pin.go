package fetch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/recipes"
)

// ErrNotInArchive is returned (wrapped) by ResolvePin when today's archive
// has no such version of the package (or no such package).
var ErrNotInArchive = errors.New("not in the archive")

// Pin is one package version as today's archive has it: what a deb: pin
// of a recipe or toolchain names, with the pool path and the snapshot
// archive's copy that keeps it after the main archive drops it.
type Pin struct {
	// Source is the deb: source of this version (the pin's own spelling:
	// architecture, suites and components kept).
	Source  string `json:"source"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	// Filename is the pool path; Archive the archive ("debian",
	// "debian-security") the file is in.
	Filename string `json:"filename"`
	Archive  string `json:"archive"`
	// Snapshot is the snapshot-archive URL of the same file, at
	// debian.SnapshotTime of the newest Release file apt read.
	Snapshot string `json:"snapshot"`
}

// ResolvePin asks apt, through an apt state of kiln's own for the pin's
// architecture, suites and components (updated once per process from the
// host's sources: today's archive), where the pinned version of a deb:
// source is. With latest, it asks for the version apt would install instead
// (moving a pin). A version or package the archive no longer has wraps
// ErrNotInArchive. The host's apt state is not touched.
func (f *Fetcher) ResolvePin(ctx context.Context, src string, latest bool) (Pin, error) {
	d, err := recipes.ParseDebSource(src)
	if err != nil {
		return Pin{}, err
	}
	arch := d.Arch
	if arch == "" {
		out, err := exec.CommandContext(ctx, "dpkg", "--print-architecture").Output()
		if err != nil {
			return Pin{}, fmt.Errorf("pin %s: dpkg --print-architecture: %w", src, err)
		}
		arch = strings.TrimSpace(string(out))
	}
	opts, lists, err := f.privateAPT(ctx, arch, d.Suites, d.Components, true)
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: %w", src, err)
	}
	spec := d.Spec()
	if latest {
		spec = d.Name
	}
	show, stderr, err := f.aptCache(ctx, opts, "show", "--no-all-versions", spec)
	if err != nil && !strings.Contains(stderr, "No packages found") {
		return Pin{}, fmt.Errorf("pin %s: %w: apt-cache show %s: %s", src, ErrAPT, spec, lastLine(stderr))
	}
	rec := firstStanza(show)
	if rec["Package"] == "" {
		return Pin{}, fmt.Errorf("pin %s: %s (%s) is %w of %s", src, spec, arch, ErrNotInArchive, strings.Join(append(append([]string{}, d.Suites...), d.Components...), " "))
	}
	p := Pin{Name: rec["Package"], Version: rec["Version"], Arch: rec["Architecture"], SHA256: rec["SHA256"], Filename: rec["Filename"]}
	p.Size, _ = strconv.ParseInt(rec["Size"], 10, 64)
	if p.Name != d.Name || p.Version == "" || p.SHA256 == "" || p.Filename == "" {
		return Pin{}, fmt.Errorf("pin %s: %w: apt-cache show %s gave an incomplete record", src, ErrAPT, spec)
	}
	nd := d
	nd.Version = p.Version
	p.Source = nd.String()
	apt := f.APTGet
	if apt == "" {
		apt = "apt-get"
	}
	uris, err := exec.CommandContext(ctx, apt, append(append([]string{}, opts...), "download", "-q", "--print-uris", nd.Spec())...).CombinedOutput()
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: %w: apt-get download --print-uris: %s", src, ErrAPT, lastLine(string(uris)))
	}
	uri := ""
	for _, l := range strings.Split(string(uris), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "'") {
			uri = strings.Trim(f[0], "'")
		}
	}
	if u, err := url.PathUnescape(uri); err == nil {
		uri = u // apt escapes '+' and an epoch's ':'
	}
	if uri == "" || path.Base(uri) != path.Base(p.Filename) {
		return Pin{}, fmt.Errorf("pin %s: %w: apt-get download --print-uris gave no URI of %s", src, ErrAPT, p.Filename)
	}
	p.Archive = debian.ArchiveOf(uri, p.Filename)
	released, err := debian.ReleaseDate(lists)
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: %w", src, err)
	}
	base := f.SnapshotBase
	if base == "" {
		base = debian.SnapshotBase
	}
	if p.Snapshot, err = debian.SnapshotURL(base, p.Archive, debian.SnapshotTime(released), p.Filename); err != nil {
		return Pin{}, fmt.Errorf("pin %s: %w", src, err)
	}
	return p, nil
}

// aptCache runs apt-cache with opts; it returns stdout and stderr.
func (f *Fetcher) aptCache(ctx context.Context, opts []string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, "apt-cache", append(append([]string{}, opts...), args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// firstStanza reads the first record of apt-cache show's output.
func firstStanza(text string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<24)
	for sc.Scan() {
		l := sc.Text()
		if l == "" && len(m) > 0 {
			break
		}
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

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
	"regexp"
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
	p, err := showRecord(show, d)
	if errors.Is(err, ErrNotInArchive) {
		return Pin{}, fmt.Errorf("pin %s: %s (%s) is %w of %s", src, spec, arch, ErrNotInArchive, strings.Join(append(append([]string{}, d.Suites...), d.Components...), " "))
	}
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: apt-cache show %s: %w", src, spec, err)
	}
	apt := f.APTGet
	if apt == "" {
		apt = "apt-get"
	}
	spec = d.Name + "=" + p.Version
	uris, err := exec.CommandContext(ctx, apt, append(append([]string{}, opts...), "download", "-q", "--print-uris", spec)...).CombinedOutput()
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: %w: apt-get download --print-uris: %s", src, ErrAPT, lastLine(string(uris)))
	}
	uri, err := printedURI(string(uris), p.Filename)
	if err != nil {
		return Pin{}, fmt.Errorf("pin %s: apt-get download --print-uris: %w", src, err)
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

// Fields of an apt-cache show record as kiln takes them into a recipe.
var (
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// debVersionRE: Debian policy 5.6.12 ([epoch:]upstream[-revision]).
	debVersionRE = regexp.MustCompile(`^([0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~:-]*$`)
)

// showRecord reads what apt-cache show --no-all-versions printed for the
// deb: source d (its first record: the version asked for, or apt's
// candidate) into a Pin with Source set: d moved to that version. The text
// comes from an archive index, so every field that goes into a recipe is
// checked: the package must be d's, the version a Debian version that a
// deb: source can carry, the sha256 64 hex digits, the pool path clean,
// relative, without "..", blanks or quotes. No record is ErrNotInArchive; a bad or incomplete one
// ErrAPT.
func showRecord(show string, d recipes.DebSource) (Pin, error) {
	rec := firstStanza(show)
	if rec["Package"] == "" {
		return Pin{}, ErrNotInArchive
	}
	p := Pin{Name: rec["Package"], Version: rec["Version"], Arch: rec["Architecture"], SHA256: strings.ToLower(rec["SHA256"]), Filename: rec["Filename"]}
	if p.Name != d.Name || p.Version == "" || p.SHA256 == "" || p.Filename == "" {
		return Pin{}, fmt.Errorf("%w: an incomplete record (package %q, version %q, sha256 %q, filename %q)", ErrAPT, p.Name, p.Version, p.SHA256, p.Filename)
	}
	if s, ok := rec["Size"]; ok {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return Pin{}, fmt.Errorf("%w: size %q", ErrAPT, s)
		}
		p.Size = n
	}
	if !sha256RE.MatchString(p.SHA256) {
		return Pin{}, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrAPT, p.SHA256)
	}
	nd := d
	nd.Version = p.Version
	p.Source = nd.String()
	if back, err := recipes.ParseDebSource(p.Source); !debVersionRE.MatchString(p.Version) || err != nil || back.Version != p.Version || back.Name != d.Name {
		return Pin{}, fmt.Errorf("%w: version %q is not a Debian version", ErrAPT, p.Version)
	}
	rel := strings.TrimPrefix(p.Filename, "./") // a flat repository's
	clean := path.Clean(rel)
	if clean != rel || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || strings.ContainsAny(clean, " \t\\'\"") {
		return Pin{}, fmt.Errorf("%w: filename %q is not a clean relative pool path", ErrAPT, p.Filename)
	}
	return p, nil
}

// printedURI returns the URI apt-get download --print-uris printed for the
// pool file filename ('URI' NAME SIZE HASH lines; apt escapes '+' and an
// epoch's ':', which are unescaped): the last such line, whose file name
// must be filename's. Anything else is ErrAPT.
func printedURI(out, filename string) (string, error) {
	uri := ""
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "'") {
			uri = strings.Trim(f[0], "'")
		}
	}
	if u, err := url.PathUnescape(uri); err == nil {
		uri = u
	}
	if uri == "" || path.Base(uri) != path.Base(filename) {
		return "", fmt.Errorf("%w: no URI of %s", ErrAPT, filename)
	}
	return uri, nil
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

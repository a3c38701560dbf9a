package fetch

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// ErrNoSource is returned (wrapped) when no source of an input could be
// fetched at all (as opposed to one that was fetched with the wrong hash,
// which is recipes.ErrHashMismatch).
var ErrNoSource = errors.New("no source could be fetched")

// ErrAPT is returned (wrapped, with apt's last line) when apt-get download
// fails for a deb: source; a stale package index is the usual cause.
var ErrAPT = errors.New("apt-get download failed")

// ErrGone is returned (wrapped) when every source of an input answered
// that it does not have the pinned file (apt: version not found; HTTP 404
// or 410; no such file): the pinned version has left the archive and no
// fallback keeps it. The fix is a new pin (kiln lock --update, or moving a
// deb: pin to the archive's current version), not a retry.
var ErrGone = errors.New("pinned version is gone from every source")

// ErrPartlyGone is returned (wrapped) when some sources answered that they
// do not have the pinned file and the others could not be asked (network,
// server errors): typically the main archive dropped the version and the
// snapshot archive is out of reach. A retry with the network can work; so
// does a new pin.
var ErrPartlyGone = errors.New("some sources no longer have the pinned version and the others could not be reached")

// errNotThere marks one source's "I do not have it" answer.
var errNotThere = errors.New("the source does not have it")

// Fetcher gets fixed-output inputs and toolchain closures into the store.
// It is the only part of kiln that uses the network.
type Fetcher struct {
	Store *store.Store
	// HTTP is the client for https: sources; nil means http.DefaultClient.
	HTTP *http.Client
	// Log receives progress lines; it may be nil. It is called from
	// several goroutines, one line at a time.
	Log func(format string, args ...any)
	// APTGet is the apt-get program for deb: sources; "" means "apt-get".
	APTGet string
	// StallTimeout abandons an https: source that sends nothing for this
	// long (the next source is tried); 0 means one minute.
	StallTimeout time.Duration
	// SnapshotBase is the snapshot archive ResolvePin names fallback URLs
	// on; "" means debian.SnapshotBase.
	SnapshotBase string
	// Substitute, if set, is asked for an entry (store key and name)
	// before its sources are fetched: a binary cache (internal/cache)
	// that returns the entry's path and true, or false to fetch as usual.
	Substitute func(ctx context.Context, key, name string) (string, bool)

	logMu sync.Mutex
}

func (f *Fetcher) logf(format string, a ...any) {
	if f.Log == nil {
		return
	}
	f.logMu.Lock()
	defer f.logMu.Unlock()
	f.Log(format, a...)
}

// InputPath returns the store path of an input's unpacked tree if it is
// already in the store. It uses no network.
func (f *Fetcher) InputPath(in recipes.Input) (string, bool) {
	return f.Store.Lookup(in.StoreKey(), in.Name)
}

// ToolchainPath returns the store path of a toolchain's merged tree if it
// is already in the store. It uses no network.
func (f *Fetcher) ToolchainPath(tc *recipes.Toolchain) (string, bool) {
	return f.Store.Lookup(tc.Hash(), tc.Name)
}

// Input fetches in and returns the store path of its content: a .deb
// unpacked (its data.tar, as dpkg-deb -x would), any other file stored as
// is under the entry as in.StoredName(). Sources are tried in order until
// one yields content with the pinned sha256; nothing enters the store
// unless the hash matched. If a source gave the wrong content, the error
// wraps recipes.ErrHashMismatch and names expected and actual hashes.
func (f *Fetcher) Input(ctx context.Context, in recipes.Input) (string, error) {
	if p, ok := f.InputPath(in); ok {
		return p, nil
	}
	if f.Substitute != nil {
		if p, ok := f.Substitute(ctx, in.StoreKey(), in.Name); ok {
			return p, nil
		}
	}
	dl, err := f.download(ctx, in)
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(filepath.Dir(dl))
	p, err := f.Store.Add(in.StoreKey(), in.Name, func(dir string) error {
		if in.Unpack {
			f.logf("unpack %s", in.Name)
			return UnpackArchive(dl, dir)
		}
		if IsDeb(dl) {
			f.logf("unpack %s", in.Name)
			return unpackDebFile(dl, dir)
		}
		dst := filepath.Join(dir, in.StoredName())
		if err := copyFile(dl, dst); err != nil {
			return err
		}
		if in.Executable {
			return os.Chmod(dst, 0o755)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("fetch: %s: %w", in.Name, err)
	}
	f.logf("stored %s %s", in.Name, p)
	return p, nil
}

// Toolchain fetches every package of the closure and returns the store path
// of the merged tree: all packages unpacked into one directory plus the
// closure's links. The tree is its own store entry, keyed by tc.Hash().
func (f *Fetcher) Toolchain(ctx context.Context, tc *recipes.Toolchain) (string, error) {
	if p, ok := f.ToolchainPath(tc); ok {
		return p, nil
	}
	if f.Substitute != nil {
		if p, ok := f.Substitute(ctx, tc.Hash(), tc.Name); ok {
			return p, nil
		}
	}
	p, err := f.Store.Add(tc.Hash(), tc.Name, func(dir string) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
		)
		work := make(chan recipes.Input)
		for range 2 { // two at a time: downloads overlap unpacking
			wg.Add(1)
			go func() {
				defer wg.Done()
				for pkg := range work {
					if err := f.addPackage(ctx, pkg, dir); err != nil {
						mu.Lock()
						if first == nil {
							first = err
							cancel()
						}
						mu.Unlock()
					}
				}
			}()
		}
		for _, pkg := range tc.Packages {
			if ctx.Err() != nil {
				break
			}
			work <- pkg
		}
		close(work)
		wg.Wait()
		if first != nil {
			return first
		}
		return makeLinks(dir, tc.Links)
	})
	if err != nil {
		return "", fmt.Errorf("fetch: toolchain %s: %w", tc.Name, err)
	}
	f.logf("stored toolchain %s %s", tc.Name, p)
	return p, nil
}

func (f *Fetcher) addPackage(ctx context.Context, pkg recipes.Input, dir string) error {
	dl, err := f.download(ctx, pkg)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(dl))
	if !IsDeb(dl) {
		return fmt.Errorf("fetch: %s: %w: not a .deb", pkg.Name, ErrBadArchive)
	}
	f.logf("unpack %s", pkg.Name)
	if err := unpackDebFile(dl, dir); err != nil {
		return fmt.Errorf("fetch: %s: %w", pkg.Name, err)
	}
	return nil
}

// makeLinks creates the closure's symlinks in the merged tree.
func makeLinks(dir string, links map[string]string) error {
	for l, target := range links {
		p := filepath.Join(dir, filepath.FromSlash(l))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("fetch: link %s: %w", l, err)
		}
		if err := os.Symlink(target, p); err != nil {
			return fmt.Errorf("fetch: link %s: %w", l, err)
		}
	}
	return nil
}

func unpackDebFile(name, dir string) error {
	fh, err := os.Open(name)
	if err != nil {
		return err
	}
	defer fh.Close()
	return UnpackDeb(bufio.NewReaderSize(fh, 1<<16), dir)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// sourceErrors collects why each source failed; errors.Is sees them all.
type sourceErrors struct {
	name string
	errs []error
}

func (e *sourceErrors) Error() string {
	var msgs []string
	gone := false
	for _, err := range e.errs {
		switch {
		case err == ErrGone:
			gone = true
		case err == ErrNoSource, err == ErrPartlyGone:
		default:
			msgs = append(msgs, err.Error())
		}
	}
	if gone {
		// Said first and plainly: a retry will not help, a new pin will.
		return fmt.Sprintf("fetch: %s: %v (%s)", e.name, ErrGone, strings.Join(msgs, "; "))
	}
	for _, err := range e.errs {
		if err == ErrNoSource || err == ErrPartlyGone {
			msgs = append(msgs, err.Error())
		}
	}
	return fmt.Sprintf("fetch: %s: %s", e.name, strings.Join(msgs, "; "))
}

func (e *sourceErrors) Unwrap() []error { return e.errs }

// download tries in's sources in order and returns the path of a
// temporary file (alone in its temporary directory inside the store root)
// whose sha256 is in.SHA256.
func (f *Fetcher) download(ctx context.Context, in recipes.Input) (string, error) {
	se := &sourceErrors{name: in.Name}
	hasMismatch, allGone, someGone := false, len(in.Sources) > 0, false
	for _, src := range in.Sources {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("fetch: %s: %w", in.Name, err)
		}
		tmp, err := os.MkdirTemp(f.Store.Root, ".tmp-"+strconv.Itoa(os.Getpid())+"-dl-")
		if err != nil {
			return "", fmt.Errorf("fetch: %w", err)
		}
		f.logf("fetch %s from %s", in.Name, src)
		file, sum, err := f.get(ctx, in, src, tmp)
		if err == nil && sum != in.SHA256 {
			err = fmt.Errorf("%s: %w: expected %s, got %s", src, recipes.ErrHashMismatch, in.SHA256, sum)
			hasMismatch = true
		}
		if err == nil {
			return file, nil
		}
		os.RemoveAll(tmp)
		f.logf("fetch %s: %v", in.Name, err)
		if !errors.Is(err, errNotThere) {
			allGone = false
		} else {
			someGone = true
		}
		se.errs = append(se.errs, err)
	}
	if !hasMismatch {
		se.errs = append(se.errs, ErrNoSource)
	}
	if allGone && !hasMismatch {
		se.errs = append(se.errs, ErrGone)
	} else if someGone && !hasMismatch {
		se.errs = append(se.errs, ErrPartlyGone)
	}
	return "", se
}

// get fetches one source into dir and returns the file and its sha256.
func (f *Fetcher) get(ctx context.Context, in recipes.Input, src, dir string) (string, string, error) {
	switch {
	case strings.HasPrefix(src, "deb:"):
		return f.getDeb(ctx, src, dir)
	case strings.HasPrefix(src, "https://"):
		return f.getHTTPS(ctx, src, dir)
	case strings.HasPrefix(src, "file:"):
		p := strings.TrimPrefix(src, "file:")
		if !filepath.IsAbs(p) {
			base := in.Dir
			if base == "" {
				base = "."
			}
			p = filepath.Join(base, p)
		}
		fh, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("%s: %w (%w)", src, err, errNotThere)
		}
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", src, err)
		}
		defer fh.Close()
		return saveHashed(fh, filepath.Join(dir, "download"), src)
	}
	return "", "", fmt.Errorf("%s: unknown source kind", src)
}

// ErrStalled is returned (wrapped) for an https: source that stopped sending.
var ErrStalled = errors.New("download stalled")

func (f *Fetcher) getHTTPS(ctx context.Context, src, dir string) (string, string, error) {
	stall := f.StallTimeout
	if stall <= 0 {
		stall = time.Minute
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The watchdog cancels the request when no byte arrived for stall.
	timer := time.AfterFunc(stall, func() { cancel(fmt.Errorf("%w: nothing for %v", ErrStalled, stall)) })
	defer timer.Stop()
	file, sum, err := f.getHTTPSWatched(ctx, src, dir, func() { timer.Reset(stall) })
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrStalled) {
		return "", "", fmt.Errorf("%s: %w", src, cause)
	}
	return file, sum, err
}

func (f *Fetcher) getHTTPSWatched(ctx context.Context, src, dir string, progress func()) (string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	c := f.HTTP
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone {
		return "", "", fmt.Errorf("%s: http status %s (%w)", src, resp.Status, errNotThere)
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("%s: http status %s", src, resp.Status)
	}
	return saveHashed(&watchedReader{resp.Body, progress}, filepath.Join(dir, "download"), src)
}

// getDeb runs the host's apt client: apt-get download NAME=VERSION.
func (f *Fetcher) getDeb(ctx context.Context, src, dir string) (string, string, error) {
	apt := f.APTGet
	if apt == "" {
		apt = "apt-get"
	}
	args := []string{"download", "-q"}
	if os.Geteuid() == 0 {
		// As root, apt would otherwise warn that its _apt user cannot
		// write to our private temporary directory.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	extra, spec, err := f.debArch(ctx, src) // a foreign architecture, suites or components
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	args = append(args, extra...)
	cmd := exec.CommandContext(ctx, apt, append(args, spec)...)
	cmd.Dir = dir
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", "", fmt.Errorf("%s: %w", src, ctx.Err())
		}
		last := lastLine(out.String())
		if strings.Contains(last, "was not found") || strings.Contains(last, "Unable to locate package") {
			return "", "", fmt.Errorf("%s: %w (%v): %s (%w)", src, ErrAPT, err, last, errNotThere)
		}
		return "", "", fmt.Errorf("%s: %w (%v): %s", src, ErrAPT, err, last)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	var debs []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".deb") && e.Type().IsRegular() {
			debs = append(debs, e.Name())
		}
	}
	if len(debs) != 1 {
		return "", "", fmt.Errorf("%s: apt-get download left %d .deb files, want 1", src, len(debs))
	}
	p := filepath.Join(dir, debs[0])
	sum, err := store.HashFile(p)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	return p, sum, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return "no output"
}

// watchedReader calls progress whenever bytes arrive.
type watchedReader struct {
	r        io.Reader
	progress func()
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.progress()
	}
	return n, err
}

// saveHashed copies r into name, hashing it on the way.
func saveHashed(r io.Reader, name, src string) (string, string, error) {
	out, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), r); err != nil {
		out.Close()
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return "", "", fmt.Errorf("%s: %w", src, err)
	}
	return name, hex.EncodeToString(h.Sum(nil)), nil
}

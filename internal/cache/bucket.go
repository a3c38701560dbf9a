package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Errors of the object stores. Test them with errors.Is.
var (
	// ErrNotFound means the cache has no such object.
	ErrNotFound = errors.New("not in the cache")
	// ErrReadOnly is returned by Put on an http:// or https:// mirror.
	ErrReadOnly = errors.New("cache is read-only")
	// ErrAuth means the object store refused the credentials (or their
	// absence); the error names where the credentials came from.
	ErrAuth = errors.New("access denied")
	// ErrUnavailable means the cache did not answer (refused, reset, timed
	// out, or a 5xx): a transient failure worth retrying.
	ErrUnavailable = errors.New("cache unavailable")
	// ErrNoList is returned by List on a store that cannot list (a web
	// mirror).
	ErrNoList = errors.New("cache cannot list its objects")
	// ErrBadURL marks a cache URL kiln cannot use.
	ErrBadURL = errors.New("bad cache URL")
)

// Bucket is the object store behind a cache. Object names are
// slash-separated and relative to the cache's prefix.
type Bucket interface {
	// Get opens an object from offset on (ErrNotFound if it is absent).
	Get(ctx context.Context, name string, offset int64) (io.ReadCloser, error)
	// Put stores an object whole: a reader sees all of it or nothing.
	Put(ctx context.Context, name string, r io.Reader, size int64) error
	// Stat returns an object's size (ErrNotFound if it is absent).
	Stat(ctx context.Context, name string) (int64, error)
	// List calls fn for every object whose name starts with prefix.
	List(ctx context.Context, prefix string, fn func(name string, size int64) error) error
}

// Open returns the bucket for a cache URL: s3://BUCKET/PREFIX?endpoint=..,
// https://.., http://.. (read-only) or file:///DIR.
func Open(raw string) (Bucket, error) { return OpenClient(raw, http.DefaultClient) }

// OpenClient is Open with the HTTP client for http:// and https:// mirrors.
func OpenClient(raw string, client *http.Client) (Bucket, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("cache: %w: %v", ErrBadURL, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("cache: %w: %s: file URLs name a local directory (file:///DIR)", ErrBadURL, raw)
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("cache: %w: %s: want an absolute directory (file:///DIR)", ErrBadURL, raw)
		}
		return &fileBucket{root: filepath.Clean(u.Path)}, nil
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("cache: %w: %s: no host", ErrBadURL, raw)
		}
		base := *u
		base.RawQuery, base.Fragment = "", ""
		return &httpBucket{base: strings.TrimSuffix(base.String(), "/") + "/", client: client}, nil
	case "s3":
		return openS3(u)
	}
	return nil, fmt.Errorf("cache: %w: %s: want s3://, https://, http:// or file://", ErrBadURL, raw)
}

// checkName refuses object names that could leave the cache's prefix.
func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." {
		return fmt.Errorf("cache: bad object name %q", name)
	}
	return nil
}

// netErr classifies a transport failure as ErrUnavailable.
func netErr(op string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return fmt.Errorf("%s: %w: %v", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// fileBucket is a cache on a (shared) file system.
type fileBucket struct{ root string }

func (b *fileBucket) String() string { return "file://" + b.root }

func (b *fileBucket) path(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return filepath.Join(b.root, filepath.FromSlash(name)), nil
}

func (b *fileBucket) Get(ctx context.Context, name string, offset int64) (io.ReadCloser, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cache: %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	return f, nil
}

// Put writes a temporary file beside the object and renames it into place.
func (b *fileBucket) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, r)
	if err == nil && n != size {
		err = fmt.Errorf("wrote %d bytes, want %d", n, size)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		return fmt.Errorf("cache: put %s: %w", name, err)
	}
	return nil
}

func (b *fileBucket) Stat(ctx context.Context, name string) (int64, error) {
	p, err := b.path(name)
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("cache: %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("cache: %w", err)
	}
	return st.Size(), nil
}

func (b *fileBucket) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	var names []string
	sizes := map[string]int64{}
	err := filepath.WalkDir(b.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == b.root && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		rel, _ := filepath.Rel(b.root, p)
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(rel, prefix) {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			names = append(names, rel)
			sizes[rel] = fi.Size()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: list: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := fn(n, sizes[n]); err != nil {
			return err
		}
	}
	return nil
}

// httpBucket is a read-only mirror: any static web server in front of the
// bucket's files.
type httpBucket struct {
	base   string // ends in "/"
	client *http.Client
}

func (b *httpBucket) String() string { return strings.TrimSuffix(b.base, "/") }

func (b *httpBucket) do(ctx context.Context, method, name string, offset int64) (*http.Response, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, b.base+name, nil)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, netErr("cache: "+method+" "+b.base+name, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
		return resp, nil
	case resp.StatusCode == http.StatusNotFound:
		err = ErrNotFound
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		err = fmt.Errorf("%w: the mirror answered %s (it must serve its files to anyone)", ErrAuth, resp.Status)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		err = fmt.Errorf("%w: %s", ErrUnavailable, resp.Status)
	default:
		err = fmt.Errorf("http status %s", resp.Status)
	}
	resp.Body.Close()
	return nil, fmt.Errorf("cache: %s %s%s: %w", method, b.base, name, err)
}

func (b *httpBucket) Get(ctx context.Context, name string, offset int64) (io.ReadCloser, error) {
	resp, err := b.do(ctx, http.MethodGet, name, offset)
	if err != nil {
		return nil, err
	}
	if offset > 0 && resp.StatusCode == http.StatusOK {
		// The server ignored Range: skip what we have.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, netErr("cache: GET "+b.base+name, err)
		}
	}
	return resp.Body, nil
}

// ReadOnly is true: a web mirror takes no uploads.
func (b *httpBucket) ReadOnly() bool { return true }

func (b *httpBucket) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	return fmt.Errorf("cache: %s: %w (push to the bucket it mirrors)", b, ErrReadOnly)
}

func (b *httpBucket) Stat(ctx context.Context, name string) (int64, error) {
	resp, err := b.do(ctx, http.MethodHead, name, 0)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

func (b *httpBucket) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	return fmt.Errorf("cache: %s: %w (verify the bucket it mirrors)", b, ErrNoList)
}

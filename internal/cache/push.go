package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// Pusher uploads store entries to a cache.
type Pusher struct {
	Bucket Bucket
	// Key signs the records.
	Key *trust.SecretKey
	// Jobs is how many entries are packed and uploaded at once (default 4).
	Jobs int
	// DryRun says what would be uploaded and uploads nothing.
	DryRun bool
	// TempDir holds the archives being uploaded ("" = os.TempDir()).
	TempDir string
	// Progress, if set, follows the bytes uploaded.
	Progress Progress
	// Log, if set, gets one line per entry; it is called from several
	// goroutines, one line at a time.
	Log func(format string, args ...any)
}

// Pushed says what Push did with one entry.
type Pushed struct {
	Entry  string `json:"entry"` // the store directory's name
	Key    string `json:"key"`
	Name   string `json:"name"`
	Action string `json:"action"` // "pushed", "present", "would push"
	// Content is the content object's sha256 and size (empty for
	// "present" and "would push").
	Content      Content `json:"content"`
	BytesWritten int64   `json:"bytes_written"` // content and record bytes uploaded
	Error        string  `json:"error,omitempty"`
}

// Push uploads the entries at paths (store entry directories), in
// parallel. For each it uploads the content object (unless an object of
// that name and size is there), then the signed record. An entry whose
// record exists is left alone. It returns one result per path and the
// first error.
func (p *Pusher) Push(ctx context.Context, paths []string) ([]Pushed, error) {
	if p.Key == nil && !p.DryRun {
		return nil, errors.New("cache: push: no signing key")
	}
	if ro, ok := p.Bucket.(interface{ ReadOnly() bool }); ok && ro.ReadOnly() && !p.DryRun {
		return nil, fmt.Errorf("cache: push to %v: %w (push to the bucket it mirrors)", p.Bucket, ErrReadOnly)
	}
	jobs := p.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	m := newMeter("push", p.Progress)
	out := make([]Pushed, len(paths))
	errs := parallel(ctx, len(paths), jobs, func(ctx context.Context, i int) error {
		r, err := p.pushOne(ctx, paths[i], m)
		out[i] = r
		if err != nil {
			out[i].Error = err.Error()
		}
		return err
	})
	for _, err := range errs {
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func (p *Pusher) logf(format string, a ...any) {
	if p.Log != nil {
		p.Log(format, a...)
	}
}

func (p *Pusher) pushOne(ctx context.Context, dir string, m *meter) (Pushed, error) {
	res := Pushed{Entry: filepath.Base(dir)}
	man, err := store.ReadManifest(dir)
	if err != nil {
		return res, fmt.Errorf("cache: push %s: %w", res.Entry, err)
	}
	res.Key, res.Name = man.Hash, man.Name
	present, err := p.present(ctx, man.Hash)
	if err != nil {
		return res, fmt.Errorf("cache: push %s: %w", res.Entry, err)
	}
	if present {
		res.Action = "present"
		p.logf("present %s", res.Entry)
		return res, nil
	}
	if p.DryRun {
		res.Action = "would push"
		p.logf("would push %s", res.Entry)
		return res, nil
	}
	// Pack into a temporary file: the object's name is its own hash, and
	// S3 wants the size up front.
	tmp, err := os.CreateTemp(p.TempDir, "kiln-push-*.tar.zst")
	if err != nil {
		return res, fmt.Errorf("cache: push %s: %w", res.Entry, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if err := pack(cw, dir, man.Files); err != nil {
		return res, fmt.Errorf("cache: push %s: pack: %w", res.Entry, err)
	}
	res.Content = Content{SHA256: hex.EncodeToString(h.Sum(nil)), Size: cw.n, Compression: Compression}
	obj := res.Content.Object()
	m.add(0, cw.n)
	var have int64 = -1
	if err := retry(ctx, func() error {
		n, err := p.Bucket.Stat(ctx, obj)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		have = n
		return err
	}); err != nil {
		return res, fmt.Errorf("cache: push %s: %w", res.Entry, err)
	}
	if have != cw.n {
		err := retry(ctx, func() error {
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return err
			}
			cr := &countingReader{r: tmp, m: m}
			return p.Bucket.Put(ctx, obj, cr, cw.n)
		})
		if err != nil {
			return res, fmt.Errorf("cache: push %s: content: %w", res.Entry, err)
		}
		res.BytesWritten += cw.n
	} else {
		m.add(cw.n, 0)
	}
	rec := &Record{Key: man.Hash, Name: man.Name, Content: res.Content, Files: man.Files}
	body, err := Seal(rec, p.Key)
	if err != nil {
		return res, fmt.Errorf("cache: push %s: %w", res.Entry, err)
	}
	// The record goes last: whoever sees it finds the content in place.
	if err := retry(ctx, func() error {
		return p.Bucket.Put(ctx, RecordObject(man.Hash), bytes.NewReader(body), int64(len(body)))
	}); err != nil {
		return res, fmt.Errorf("cache: push %s: record: %w", res.Entry, err)
	}
	res.BytesWritten += int64(len(body))
	res.Action = "pushed"
	p.logf("pushed %s (%d bytes)", res.Entry, cw.n)
	return res, nil
}

// present reports whether the cache holds a usable record of key, whose
// content object is there with the recorded size. A record signed by the
// pusher's key must verify; one signed by another key is someone else's
// and is left alone. A record that is malformed, does not verify or lost
// its content is replaced by the push.
func (p *Pusher) present(ctx context.Context, key string) (bool, error) {
	data, err := getRecord(ctx, p.Bucket, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil && !errors.Is(err, ErrBadRecord) {
		return false, err
	}
	var rec *Record
	if err == nil {
		signer := signerOf(data)
		switch {
		case p.Key != nil && signer == p.Key.ID.String():
			rec, _, err = OpenRecord(data, []*trust.PublicKey{p.Key.Public()})
		case signer != "":
			// Another key's record: read it without judging its signature.
			rec, err = parseUnverified(data)
			if err == nil {
				p.logf("%s: the cache's record is signed by key %s, not this push's", key, signer)
			}
		default:
			err = fmt.Errorf("%w: no signature", ErrBadRecord)
		}
	}
	if err == nil && rec.Key != key {
		err = fmt.Errorf("%w: record names key %s", ErrBadRecord, rec.Key)
	}
	if err != nil {
		p.logf("replacing the record of %s: %v", key, err)
		return false, nil
	}
	var size int64
	err = retry(ctx, func() error {
		var err error
		size, err = p.Bucket.Stat(ctx, rec.Content.Object())
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil && size == rec.Content.Size, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

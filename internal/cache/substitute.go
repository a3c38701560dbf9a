package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// ErrMiss is returned by Substitute when no cache supplied the entry (each
// cache's reason is in the notes).
var ErrMiss = errors.New("no cache supplied the entry")

// maxRecordSize bounds a record object (a toolchain of thousands of files
// is well under it).
const maxRecordSize = 64 << 20

// Substituter is one cache to substitute from, with the keys whose records
// it accepts.
type Substituter struct {
	URL    string
	Bucket Bucket
	Keys   []*trust.PublicKey
	// KeyNames names Keys (by key ID) for the provenance; optional.
	KeyNames map[string]string
}

// NewSubstituter opens the cache at url, accepting records signed by keys.
func NewSubstituter(url string, keys []*trust.PublicKey) (*Substituter, error) {
	b, err := Open(url)
	if err != nil {
		return nil, err
	}
	return &Substituter{URL: url, Bucket: b, Keys: keys}, nil
}

// Set is the ordered list of caches a build asks before fetching or
// building.
type Set struct {
	Subs []*Substituter
	// Note gets one line for every cache that was skipped and why; it may
	// be nil. It is called from several goroutines, one line at a time.
	Note func(format string, args ...any)
	// Progress, if set, follows the bytes downloaded.
	Progress Progress

	mu    sync.Mutex
	meter *meter
}

func (s *Set) note(format string, a ...any) {
	if s.Note == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Note(format, a...)
}

// Origin is where a substituted entry came from. It is kept beside the
// store (OriginDir) for the manifest and the provenance.
type Origin struct {
	Entry         string    `json:"entry"`
	Key           string    `json:"key"`
	Cache         string    `json:"cache"`
	Signer        string    `json:"signer"`
	SignerName    string    `json:"signer_name,omitempty"`
	ContentSHA256 string    `json:"content_sha256"`
	ContentSize   int64     `json:"content_size"`
	Time          time.Time `json:"time"`
}

// OriginDir is the directory, inside a store's root, of the origins of
// substituted entries. Its name is not an entry's, so the store ignores it.
const OriginDir = ".kiln-substituted"

// OriginOf returns the origin of a store entry, or nil if it was not
// substituted.
func OriginOf(st *store.Store, entryPath string) *Origin {
	data, err := os.ReadFile(filepath.Join(st.Root, OriginDir, filepath.Base(entryPath)+".json"))
	if err != nil {
		return nil
	}
	var o Origin
	if json.Unmarshal(data, &o) != nil {
		return nil
	}
	return &o
}

// Substitute makes the store entry (key, name) from the first cache that
// has a valid record for it and content matching every hash. It returns the
// entry's path and origin; ErrMiss when no cache supplied it. A cache that
// is down, an unsigned or wrong record, and content that disagrees with its
// record are notes, not errors: the next cache is asked. Nothing enters
// the store unless every check passed.
func (s *Set) Substitute(ctx context.Context, st *store.Store, key, name string) (string, *Origin, error) {
	if s == nil || len(s.Subs) == 0 {
		return "", nil, ErrMiss
	}
	if p, ok := st.Lookup(key, name); ok {
		return p, OriginOf(st, p), nil
	}
	for _, sub := range s.Subs {
		if err := ctx.Err(); err != nil {
			return "", nil, err
		}
		p, o, err := s.try(ctx, st, sub, key, name)
		if err == nil {
			return p, o, nil
		}
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		s.note("cache %s: %s-%s skipped: %v", sub.URL, short(key), name, err)
	}
	return "", nil, fmt.Errorf("cache: %s-%s: %w", short(key), name, ErrMiss)
}

func short(h string) string {
	if len(h) > 32 {
		return h[:32]
	}
	return h
}

func (s *Set) progress() *meter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meter == nil {
		s.meter = newMeter("pull", s.Progress)
	}
	return s.meter
}

func (s *Set) try(ctx context.Context, st *store.Store, sub *Substituter, key, name string) (string, *Origin, error) {
	rec, pk, err := FetchRecord(ctx, sub.Bucket, key, sub.Keys)
	if err != nil {
		return "", nil, err
	}
	if rec.Name != name {
		return "", nil, fmt.Errorf("%w: record is for %q, not %q", ErrBadRecord, rec.Name, name)
	}
	m := s.progress()
	m.add(0, rec.Content.Size)
	p, err := st.Add(key, name, func(dir string) error {
		return pull(ctx, sub.Bucket, rec, dir, m)
	})
	if err != nil {
		return "", nil, err
	}
	o := &Origin{Entry: filepath.Base(p), Key: key, Cache: sub.URL, Signer: pk.ID.String(), SignerName: sub.KeyNames[pk.ID.String()],
		ContentSHA256: rec.Content.SHA256, ContentSize: rec.Content.Size, Time: time.Now().UTC()}
	if err := saveOrigin(st, o); err != nil {
		s.note("cache: %s: recording origin: %v", o.Entry, err)
	}
	return p, o, nil
}

func saveOrigin(st *store.Store, o *Origin) error {
	dir := filepath.Join(st.Root, OriginDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(o, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, o.Entry+".json"))
}

// FetchRecord reads the record of key from b and checks its signature
// against keys and that it is the record of key.
func FetchRecord(ctx context.Context, b Bucket, key string, keys []*trust.PublicKey) (*Record, *trust.PublicKey, error) {
	data, err := getRecord(ctx, b, key)
	if err != nil {
		return nil, nil, err
	}
	rec, pk, err := OpenRecord(data, keys)
	if err != nil {
		return nil, nil, err
	}
	if rec.Key != key {
		return nil, nil, fmt.Errorf("%w: record names key %s, asked for %s", ErrBadRecord, rec.Key, key)
	}
	return rec, pk, nil
}

// getRecord reads the record object of key, bounded in size.
func getRecord(ctx context.Context, b Bucket, key string) ([]byte, error) {
	var data []byte
	err := retry(ctx, func() error {
		rc, err := b.Get(ctx, RecordObject(key), 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err = io.ReadAll(io.LimitReader(rc, maxRecordSize+1))
		if err != nil {
			return netErr("cache: get "+RecordObject(key), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(data) > maxRecordSize {
		return nil, fmt.Errorf("%w: record larger than %d bytes", ErrBadRecord, maxRecordSize)
	}
	return data, nil
}

// pull streams the content of rec into dir: downloading (resuming a dropped
// connection), hashing, decompressing and unpacking at once. The content's
// size and sha256 are checked at the end, every file's on the way.
func pull(ctx context.Context, b Bucket, rec *Record, dir string, m *meter) error {
	rr, err := openResuming(ctx, b, rec.Content.Object())
	if err != nil {
		return err
	}
	defer rr.Close()
	hr := &hashReader{r: io.LimitReader(&countingReader{r: rr, m: m}, rec.Content.Size+1), h: sha256.New()}
	return finish(hr, rec, unpack(hr, dir, rec.Files))
}

// finish checks what is left of a content stream after unpack: nothing may
// follow the archive, and size and sha256 must be the record's.
func finish(hr *hashReader, rec *Record, uerr error) error {
	if uerr == nil {
		_, uerr = io.Copy(io.Discard, hr)
	}
	switch {
	case hr.err == io.EOF && hr.n < rec.Content.Size:
		return fmt.Errorf("%w: truncated: %d of %d bytes", ErrContent, hr.n, rec.Content.Size)
	case hr.n > rec.Content.Size:
		return fmt.Errorf("%w: content longer than the record's %d bytes", ErrContent, rec.Content.Size)
	case uerr != nil:
		return uerr
	}
	if got := hex.EncodeToString(hr.h.Sum(nil)); got != rec.Content.SHA256 {
		return fmt.Errorf("%w: content sha256 %s, record says %s", ErrContent, got, rec.Content.SHA256)
	}
	return nil
}

type hashReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	if err != nil {
		h.err = err
	}
	return n, err
}

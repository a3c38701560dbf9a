package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

func TestMain(m *testing.M) {
	FirstBackoff = 10 * time.Millisecond
	code := m.Run()
	if kilnBin.path != "" {
		os.RemoveAll(filepath.Dir(kilnBin.path))
	}
	os.Exit(code)
}

// entry adds a small entry to st: a file, an executable in a
// subdirectory, a symlink, and a larger file of incompressible bytes.
func entry(t testing.TB, st *store.Store, name string, seed byte) (key, path string) {
	t.Helper()
	key = fmt.Sprintf("%064x", sha256.Sum256([]byte{seed}))
	p, err := st.Add(key, name, func(dir string) error {
		os.WriteFile(filepath.Join(dir, "firmware.hex"), []byte(":00000001FF\n"), 0o644)
		os.Mkdir(filepath.Join(dir, "bin"), 0o755)
		os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("#!/bin/sh\necho tool\n"), 0o755)
		os.Symlink("bin/tool", filepath.Join(dir, "link"))
		big := make([]byte, 300<<10)
		for i := range big {
			big[i] = byte(i*7+int(seed)) ^ byte(i>>9)
		}
		return os.WriteFile(filepath.Join(dir, "data.bin"), big, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return key, p
}

func newStore(t testing.TB) *store.Store {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newKey(t testing.TB) *trust.SecretKey {
	sk, err := trust.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func fileCache(t testing.TB) (string, Bucket) {
	dir := t.TempDir()
	u := "file://" + dir
	b, err := Open(u)
	if err != nil {
		t.Fatal(err)
	}
	return u, b
}

func push(t testing.TB, b Bucket, sk *trust.SecretKey, paths ...string) []Pushed {
	t.Helper()
	res, err := (&Pusher{Bucket: b, Key: sk}).Push(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// sameTree fails unless the two entries hold the same files.
func sameTree(t testing.TB, a, b string) {
	t.Helper()
	ma, err := store.ReadManifest(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := store.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ma.Files) != fmt.Sprint(mb.Files) {
		t.Fatalf("entries differ:\n%v\n%v", ma.Files, mb.Files)
	}
}

// noEntries fails if st holds any entry or leftover.
func noEntries(t testing.TB, st *store.Store) {
	t.Helper()
	ents, _ := os.ReadDir(st.Root)
	for _, e := range ents {
		if e.Name() != OriginDir {
			t.Errorf("store holds %s after a refused substitution", e.Name())
		}
	}
}

func TestPushSubstituteRoundTrip(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	sk := newKey(t)
	key, p := entry(t, a, "blink", 1)
	u, bk := fileCache(t)
	res := push(t, bk, sk, p)
	if res[0].Action != "pushed" || res[0].Content.Size == 0 {
		t.Fatalf("push: %+v", res[0])
	}
	// Pushing again is a no-op.
	if again := push(t, bk, sk, p); again[0].Action != "present" || again[0].BytesWritten != 0 {
		t.Fatalf("second push: %+v", again[0])
	}
	sub, err := NewSubstituter(u, []*trust.PublicKey{sk.Public()})
	if err != nil {
		t.Fatal(err)
	}
	set := &Set{Subs: []*Substituter{sub}, Note: t.Logf}
	got, o, err := set.Substitute(ctx, b, key, "blink")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(got); err != nil {
		t.Fatal(err)
	}
	sameTree(t, p, got)
	if o.Cache != u || o.Signer != sk.ID.String() || o.ContentSHA256 != res[0].Content.SHA256 {
		t.Fatalf("origin %+v", o)
	}
	if o2 := OriginOf(b, got); o2 == nil || o2.Cache != u {
		t.Fatalf("origin not recorded: %+v", o2)
	}
	// A key the cache does not hold is a miss, not an error.
	if _, _, err := set.Substitute(ctx, b, strings.Repeat("ab", 32), "blink"); !errors.Is(err, ErrMiss) {
		t.Fatalf("absent entry: %v", err)
	}
}

// Two pushes of the same entry with the same key write the same bytes.
func TestPushDeterministic(t *testing.T) {
	a, b := newStore(t), newStore(t)
	sk := newKey(t)
	_, pa := entry(t, a, "x", 3)
	_, pb := entry(t, b, "x", 3)
	_, c1 := fileCache(t)
	_, c2 := fileCache(t)
	r1, r2 := push(t, c1, sk, pa), push(t, c2, sk, pb)
	if r1[0].Content != r2[0].Content {
		t.Fatalf("content differs: %+v vs %+v", r1[0].Content, r2[0].Content)
	}
	read := func(bk Bucket) []byte {
		rc, err := bk.Get(context.Background(), RecordObject(r1[0].Key), 0)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		var buf bytes.Buffer
		buf.ReadFrom(rc)
		return buf.Bytes()
	}
	if !bytes.Equal(read(c1), read(c2)) {
		t.Fatal("records differ")
	}
}

// hostile sets up a cache holding one entry and returns what a test needs
// to spoil it.
type hostile struct {
	key, path string
	url       string
	bucket    Bucket
	dir       string // the cache's directory
	sk        *trust.SecretKey
	pushed    Pushed
}

func newHostile(t *testing.T) *hostile {
	a := newStore(t)
	h := &hostile{sk: newKey(t)}
	h.key, h.path = entry(t, a, "blink", 9)
	h.url, h.bucket = fileCache(t)
	h.dir = strings.TrimPrefix(h.url, "file://")
	h.pushed = push(t, h.bucket, h.sk, h.path)[0]
	return h
}

func (h *hostile) object(name string) string {
	return filepath.Join(h.dir, filepath.FromSlash(name))
}

// TestHostileCaches: each spoiled cache is skipped with a note, the next
// cache (a good one) supplies the entry, and nothing wrong enters the store.
func TestHostileCaches(t *testing.T) {
	closed := func() string { // a port nothing listens on
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr + "/cache"
	}
	cases := []struct {
		name  string
		spoil func(t *testing.T, h *hostile) (url string, keys []*trust.PublicKey)
		want  error
		note  string
	}{
		{"unknown signer", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			// Re-signed by a key nobody accepts.
			rec, _, err := FetchRecord(context.Background(), h.bucket, h.key, []*trust.PublicKey{h.sk.Public()})
			if err != nil {
				t.Fatal(err)
			}
			body, _ := Seal(rec, newKey(t))
			os.WriteFile(h.object(RecordObject(h.key)), body, 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrUnsigned, "not signed by an accepted key"},
		{"flipped byte", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			p := h.object(h.pushed.Content.Object())
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 0x01
			os.WriteFile(p, data, 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrContent, "does not match its record"},
		{"truncated", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			p := h.object(h.pushed.Content.Object())
			data, _ := os.ReadFile(p)
			os.WriteFile(p, data[:len(data)*2/3], 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrContent, "truncated"},
		{"truncated over http", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			// The server announces the whole length and hangs up two
			// thirds in, every time: resumed downloads get no further.
			data, _ := os.ReadFile(h.object(h.pushed.Content.Object()))
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/content/") {
					w.Header().Set("Content-Length", fmt.Sprint(len(data)))
					w.WriteHeader(200)
					w.Write(data[:len(data)*2/3])
					return
				}
				http.ServeFile(w, r, filepath.Join(h.dir, r.URL.Path))
			}))
			t.Cleanup(srv.Close)
			return srv.URL, []*trust.PublicKey{h.sk.Public()}
		}, ErrUnavailable, "cache unavailable"},
		{"record disagrees with content", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			// Validly signed, but a file's hash is not the content's.
			rec, _, _ := FetchRecord(context.Background(), h.bucket, h.key, []*trust.PublicKey{h.sk.Public()})
			for i := range rec.Files {
				if rec.Files[i].Path == "firmware.hex" {
					rec.Files[i].SHA256 = strings.Repeat("0", 64)
				}
			}
			body, _ := Seal(rec, h.sk)
			os.WriteFile(h.object(RecordObject(h.key)), body, 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrContent, "firmware.hex"},
		{"record with the wrong content hash", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			rec, _, _ := FetchRecord(context.Background(), h.bucket, h.key, []*trust.PublicKey{h.sk.Public()})
			good := h.object(rec.Content.Object())
			rec.Content.SHA256 = strings.Repeat("1", 64)
			data, _ := os.ReadFile(good)
			os.WriteFile(h.object(rec.Content.Object()), data, 0o644)
			body, _ := Seal(rec, h.sk)
			os.WriteFile(h.object(RecordObject(h.key)), body, 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrContent, "content sha256"},
		{"record for another entry", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			rec, _, _ := FetchRecord(context.Background(), h.bucket, h.key, []*trust.PublicKey{h.sk.Public()})
			rec.Key = strings.Repeat("cd", 32)
			body, _ := Seal(rec, h.sk)
			os.WriteFile(h.object(RecordObject(h.key)), body, 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrBadRecord, "names key"},
		{"edited record body", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			p := h.object(RecordObject(h.key))
			data, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(data, []byte(`firmware.hex`), []byte(`firmware.hey`), 1), 0o644)
			return h.url, []*trust.PublicKey{h.sk.Public()}
		}, ErrUnsigned, "signature"},
		{"cache down", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			return closed(), []*trust.PublicKey{h.sk.Public()}
		}, ErrUnavailable, "cache unavailable"},
		{"no key accepted", func(t *testing.T, h *hostile) (string, []*trust.PublicKey) {
			return h.url, nil
		}, ErrUnsigned, "no key is accepted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			h := newHostile(t)
			badURL, keys := c.spoil(t, h)
			// The bad cache alone: a miss with a note, and an empty store.
			st := newStore(t)
			bad, err := NewSubstituter(badURL, keys)
			if err != nil {
				t.Fatal(err)
			}
			var notes []string
			var mu sync.Mutex
			note := func(f string, a ...any) { mu.Lock(); notes = append(notes, fmt.Sprintf(f, a...)); mu.Unlock() }
			_, _, err = (&Set{Subs: []*Substituter{bad}, Note: note}).Substitute(ctx, st, h.key, "blink")
			if !errors.Is(err, ErrMiss) {
				t.Fatalf("substitute from the spoiled cache: %v", err)
			}
			if len(notes) != 1 || !strings.Contains(notes[0], c.note) || !strings.Contains(notes[0], "skipped") {
				t.Fatalf("notes %q, want one mentioning %q", notes, c.note)
			}
			noEntries(t, st)
			// Check the sentinel through the substituter directly.
			if _, _, err := (&Set{}).try(ctx, st, bad, h.key, "blink"); !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			noEntries(t, st)
			// With a good cache behind it: the good one supplies the entry.
			good := newHostile(t)
			gsub, _ := NewSubstituter(good.url, []*trust.PublicKey{good.sk.Public(), h.sk.Public()})
			notes = nil
			p, o, err := (&Set{Subs: []*Substituter{bad, gsub}, Note: note}).Substitute(ctx, st, good.key, "blink")
			if err != nil {
				t.Fatal(err)
			}
			if o.Cache != good.url {
				t.Fatalf("origin %s, want the good cache", o.Cache)
			}
			if err := st.Verify(p); err != nil {
				t.Fatal(err)
			}
			sameTree(t, good.path, p)
		})
	}
}

// A download that breaks part way resumes from where it broke.
func TestResumedDownload(t *testing.T) {
	h := newHostile(t)
	data, _ := os.ReadFile(h.object(h.pushed.Content.Object()))
	var mu sync.Mutex
	ranges := []string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/content/") {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			first := len(ranges) == 1
			mu.Unlock()
			if first { // the first answer breaks half way
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				w.WriteHeader(200)
				w.Write(data[:len(data)/2])
				return
			}
		}
		http.ServeFile(w, r, filepath.Join(h.dir, r.URL.Path))
	}))
	defer srv.Close()
	st := newStore(t)
	sub, _ := NewSubstituter(srv.URL, []*trust.PublicKey{h.sk.Public()})
	p, _, err := (&Set{Subs: []*Substituter{sub}}).Substitute(context.Background(), st, h.key, "blink")
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, h.path, p)
	if len(ranges) != 2 || ranges[1] != fmt.Sprintf("bytes=%d-", len(data)/2) {
		t.Fatalf("requests %q, want a resume from %d", ranges, len(data)/2)
	}
}

func TestVerifyCache(t *testing.T) {
	ctx := context.Background()
	h := newHostile(t)
	st := newStore(t)
	_, p2 := entry(t, st, "other", 4)
	push(t, h.bucket, h.sk, p2)
	keys := []*trust.PublicKey{h.sk.Public()}
	rep, err := Verify(ctx, h.bucket, keys, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Records) != 2 || rep.Bad != 0 || len(rep.Unreferenced) != 0 {
		t.Fatalf("clean cache: %+v", rep)
	}
	// Spoil one object: exactly that record is bad.
	p := h.object(h.pushed.Content.Object())
	data, _ := os.ReadFile(p)
	data[100] ^= 0x80
	os.WriteFile(p, data, 0o644)
	// An orphan content object (an interrupted push) is reported, not bad.
	os.WriteFile(h.object(ContentObject(strings.Repeat("e", 64))), []byte("x"), 0o644)
	rep, err = Verify(ctx, h.bucket, keys, 2)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bad != 1 || len(rep.Unreferenced) != 1 {
		t.Fatalf("spoiled cache: %+v", rep)
	}
	for _, r := range rep.Records {
		if r.Key == h.key && (r.OK || !strings.Contains(r.Error, "match")) {
			t.Fatalf("spoiled record reported %+v", r)
		}
	}
}

// A tampered local entry is refused by push: nothing is uploaded.
func TestPushRefusesTamperedEntry(t *testing.T) {
	st := newStore(t)
	_, p := entry(t, st, "blink", 5)
	f := filepath.Join(p, "firmware.hex")
	os.Chmod(f, 0o644)
	os.WriteFile(f, []byte(":00000001FE\n"), 0o644)
	_, bk := fileCache(t)
	_, err := (&Pusher{Bucket: bk, Key: newKey(t)}).Push(context.Background(), []string{p})
	if !errors.Is(err, store.ErrTampered) {
		t.Fatalf("push of a tampered entry: %v", err)
	}
	n := 0
	bk.List(context.Background(), "records/", func(string, int64) error { n++; return nil })
	if n != 0 {
		t.Fatal("a record was written")
	}
}

// A hostile archive cannot write outside the entry or add files.
func TestUnpackRefusesEscapes(t *testing.T) {
	st := newStore(t)
	_, p := entry(t, st, "blink", 6)
	m, _ := store.ReadManifest(p)
	var buf bytes.Buffer
	if err := pack(&buf, p, m.Files); err != nil {
		t.Fatal(err)
	}
	// Fewer files in the record than in the archive.
	dir := t.TempDir()
	if err := unpack(bytes.NewReader(buf.Bytes()), dir, m.Files[1:]); !errors.Is(err, ErrContent) {
		t.Fatalf("extra file: %v", err)
	}
	// A record that wants a file the archive lacks.
	extra := append(append([]store.FileRecord(nil), m.Files...), store.FileRecord{Path: "zz", Type: "file", SHA256: strings.Repeat("0", 64)})
	if err := unpack(bytes.NewReader(buf.Bytes()), t.TempDir(), extra); !errors.Is(err, ErrContent) {
		t.Fatalf("missing file: %v", err)
	}
	// Records with escaping paths are malformed.
	r := &Record{Key: strings.Repeat("a", 64), Name: "x", Content: Content{SHA256: strings.Repeat("b", 64), Size: 1, Compression: Compression},
		Files: []store.FileRecord{{Path: "../evil", Type: "file", SHA256: strings.Repeat("c", 64)}}}
	if _, err := Seal(r, newKey(t)); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("escaping path: %v", err)
	}
	_ = hex.EncodeToString
}

// gc's view of a push: referenced while it runs, free after, and a
// reference left by a dead process does not count.
func TestReferences(t *testing.T) {
	st := newStore(t)
	_, p := entry(t, st, "blink", 7)
	release, err := Reference(st, []string{p})
	if err != nil {
		t.Fatal(err)
	}
	if !Referenced(st)[filepath.Base(p)] {
		t.Fatal("not referenced during the push")
	}
	release()
	if Referenced(st)[filepath.Base(p)] {
		t.Fatal("still referenced after the push")
	}
	os.WriteFile(filepath.Join(st.Root, RefDir, filepath.Base(p)+"@999999999"), nil, 0o644)
	if Referenced(st)[filepath.Base(p)] {
		t.Fatal("a dead process's reference kept the entry")
	}
}

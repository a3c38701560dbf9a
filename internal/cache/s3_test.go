package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"

	"kiln.dev/kiln/internal/cache/cachetest"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// writerEnv gives this process the gateway writer's credentials.
func writerEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", cachetest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cachetest.SecretKey)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
}

// TestSeaweedFS pushes to SeaweedFS's S3 gateway and substitutes from it
// directly and through nginx over HTTPS; writes without credentials, with
// a wrong secret and through the mirror are refused with errors that say
// which credentials were used; a spoiled object in one cache falls back to
// the next.
func TestSeaweedFS(t *testing.T) {
	ctx := context.Background()
	w := cachetest.StartWeed(t, "", "127.0.0.1")
	m := cachetest.StartMirror(t, w, "", "127.0.0.1", "main")
	writerEnv(t)
	sk := newKey(t)
	keys := []*trust.PublicKey{sk.Public()}
	a := newStore(t)
	key, p := entry(t, a, "blink", 21)
	key2, p2 := entry(t, a, "core", 22)

	s3, err := Open(w.URL("main"))
	if err != nil {
		t.Fatal(err)
	}
	res := push(t, s3, sk, p, p2)
	for _, r := range res {
		if r.Action != "pushed" {
			t.Fatalf("push: %+v", r)
		}
	}
	if again := push(t, s3, sk, p, p2); again[0].Action != "present" || again[1].Action != "present" {
		t.Fatalf("second push: %+v", again)
	}
	rep, err := Verify(ctx, s3, keys, 4)
	if err != nil || rep.Bad != 0 || len(rep.Records) != 2 {
		t.Fatalf("verify: %+v %v", rep, err)
	}

	// Substitute from the gateway, and from the HTTPS mirror.
	mirror, err := OpenClient(m.URL, m.Client())
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []*Substituter{{URL: w.URL("main"), Bucket: s3, Keys: keys}, {URL: m.URL, Bucket: mirror, Keys: keys}} {
		b := newStore(t)
		for _, k := range []struct{ key, name, want string }{{key, "blink", p}, {key2, "core", p2}} {
			got, o, err := (&Set{Subs: []*Substituter{sub}}).Substitute(ctx, b, k.key, k.name)
			if err != nil {
				t.Fatalf("substitute from %s: %v", sub.URL, err)
			}
			if o.Cache != sub.URL {
				t.Fatalf("origin %+v", o)
			}
			sameTree(t, k.want, got)
		}
	}

	// The mirror is read-only: kiln refuses to push to it, nginx refuses a PUT.
	if _, err := (&Pusher{Bucket: mirror, Key: sk}).Push(ctx, []string{p}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("push to the mirror: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPut, m.URL+"/records/x.json", strings.NewReader("x"))
	if resp, err := m.Client().Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("PUT through the mirror: %v %v", resp, err)
	}

	// No credentials: the gateway refuses the write, and the error says so.
	_, p3 := entry(t, a, "other", 23)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	anon, _ := Open(w.URL("main"))
	_, err = (&Pusher{Bucket: anon, Key: sk}).Push(ctx, []string{p3})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "anonymous") {
		t.Fatalf("anonymous push: %v", err)
	}
	t.Logf("anonymous push: %v", err)
	// A wrong secret: the error names the variable the key came from.
	t.Setenv("AWS_ACCESS_KEY_ID", cachetest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	bad, _ := Open(w.URL("main"))
	_, err = (&Pusher{Bucket: bad, Key: sk}).Push(ctx, []string{p3})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("push with a wrong secret: %v", err)
	}
	t.Logf("wrong secret: %v", err)
	writerEnv(t)

	// A spoiled cache first, the good one second: the good one is used.
	spoiled, _ := Open(w.URL("spoiled"))
	push(t, spoiled, sk, p)
	c := w.Client()
	obj := "spoiled/" + res[0].Content.Object()
	o, err := c.GetObject(ctx, cachetest.Bucket, obj, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(o)
	data := buf.Bytes()
	data[len(data)/3] ^= 0x20
	if _, err := c.PutObject(ctx, cachetest.Bucket, obj, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	var notes []string
	b := newStore(t)
	got, from, err := (&Set{Subs: []*Substituter{{URL: w.URL("spoiled"), Bucket: spoiled, Keys: keys}, {URL: m.URL, Bucket: mirror, Keys: keys}},
		Note: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }}).Substitute(ctx, b, key, "blink")
	if err != nil || from.Cache != m.URL {
		t.Fatalf("substitute past a spoiled cache: %v %+v", err, from)
	}
	sameTree(t, p, got)
	if len(notes) != 1 || !strings.Contains(notes[0], "does not match its record") {
		t.Fatalf("notes %q", notes)
	}
}

// TestPushKilledStore: the object store is killed in the middle of a push.
// Afterwards no reader sees a partial entry (no record, so a miss, and
// verify finds nothing bad); the next push completes the entry.
func TestPushKilledStore(t *testing.T) {
	ctx := context.Background()
	w := cachetest.StartWeed(t, "", "127.0.0.1")
	writerEnv(t)
	sk := newKey(t)
	keys := []*trust.PublicKey{sk.Public()}
	a := newStore(t)
	key := strings.Repeat("5a", 32)
	big := make([]byte, 48<<20) // incompressible: the upload takes a while
	rand.Read(big)
	p, err := a.Add(key, "toolchain", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "blob"), big, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	bk, _ := Open(w.URL("kill"))
	var once sync.Once
	killed := make(chan struct{})
	pu := &Pusher{Bucket: bk, Key: sk, Progress: func(phase string, done, total int64) {
		if done > 8<<20 {
			once.Do(func() { go func() { w.Kill(); close(killed) }() })
		}
	}}
	_, err = pu.Push(ctx, []string{p})
	<-killed
	if err == nil {
		t.Fatal("push succeeded although the store was killed during it")
	}
	t.Logf("push during the kill: %v", err)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	// No record: a reader sees nothing, substitution is a miss.
	if _, _, err := FetchRecord(ctx, bk, key, keys); !errors.Is(err, ErrNotFound) {
		t.Fatalf("record after the kill: %v", err)
	}
	b := newStore(t)
	if _, _, err := (&Set{Subs: []*Substituter{{URL: "kill", Bucket: bk, Keys: keys}}}).Substitute(ctx, b, key, "toolchain"); !errors.Is(err, ErrMiss) {
		t.Fatalf("substitute after the kill: %v", err)
	}
	noEntries(t, b)
	rep, err := Verify(ctx, bk, keys, 2)
	if err != nil || rep.Bad != 0 || len(rep.Records) != 0 {
		t.Fatalf("verify after the kill: %+v %v", rep, err)
	}
	// The next push completes it.
	res := push(t, bk, sk, p)
	if res[0].Action != "pushed" {
		t.Fatalf("push after restart: %+v", res[0])
	}
	got, _, err := (&Set{Subs: []*Substituter{{URL: "kill", Bucket: bk, Keys: keys}}}).Substitute(ctx, b, key, "toolchain")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(got); err != nil {
		t.Fatal(err)
	}
	sameTree(t, p, got)
	_ = store.ManifestName
}

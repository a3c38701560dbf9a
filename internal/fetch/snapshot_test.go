package fetch_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/debian/debtest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// TestLockFallbackToSnapshot: one local HTTPS server plays Debian's main
// archive (which dropped the locked version) and the snapshot archive
// (which keeps it, under the lock's resolution time). The fetcher tries
// the mirror first, then the snapshot copy, checks the sha256 either way,
// and says plainly when the version is gone from both.
func TestLockFallbackToSnapshot(t *testing.T) {
	deb := debtest.Build(t, t.TempDir(), debtest.Deb{Name: "kiln-hello", Version: "1:2.10-3", Files: map[string]string{"usr/share/doc/kiln-hello/README": "hi\n"}})
	content, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := store.HashFile(deb)
	resolved := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	const pool = "pool/main/k/kiln-hello/kiln-hello_2.10-3_arm64.deb"

	var mu sync.Mutex
	var asked []string
	serve := map[string][]byte{} // path → body; anything else is 404
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		body, ok := serve[r.URL.Path]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	snapPath := "/archive/debian/20261203T180000Z/" + pool

	lock := &debian.Lock{Format: debian.LockFormat, Resolved: resolved,
		Request: debian.Request{Arch: "arm64", Mirror: srv.URL + "/debian"},
		Packages: []debian.Package{{Name: "kiln-hello", Version: "1:2.10-3", Arch: "arm64", SHA256: sum,
			Size: int64(len(content)), Filename: pool, Archive: "debian"}}}
	ins, err := recipes.LockInputs(lock, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := ins[0].Sources; len(got) != 2 || got[0] != srv.URL+"/debian/"+pool || got[1] != srv.URL+snapPath {
		t.Fatalf("sources = %v", got)
	}
	fetcher := func() *fetch.Fetcher {
		st, err := store.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return &fetch.Fetcher{Store: st, HTTP: srv.Client()}
	}
	reset := func(m map[string][]byte) {
		mu.Lock()
		serve, asked = m, nil
		mu.Unlock()
	}

	// The main archive still has it: the snapshot is not asked.
	reset(map[string][]byte{"/debian/" + pool: content, snapPath: content})
	p, err := fetcher().DebFile(context.Background(), ins[0])
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := store.HashFile(p); got != sum || filepath.Base(p) != "kiln-hello_2.10-3_arm64.deb" || len(asked) != 1 {
		t.Fatalf("from the mirror: %s %s, asked %v", p, got, asked)
	}

	// Gone from the main archive: the snapshot copy is fetched.
	reset(map[string][]byte{snapPath: content})
	if p, err = fetcher().DebFile(context.Background(), ins[0]); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.HashFile(p); got != sum || strings.Join(asked, " ") != "/debian/"+pool+" "+snapPath {
		t.Fatalf("fallback: %s, asked %v", got, asked)
	}

	// The snapshot serves other bytes: refused, nothing stored.
	reset(map[string][]byte{snapPath: append([]byte("x"), content...)})
	f := fetcher()
	_, err = f.DebFile(context.Background(), ins[0])
	if !errors.Is(err, recipes.ErrHashMismatch) || errors.Is(err, fetch.ErrGone) {
		t.Fatalf("wrong bytes: %v", err)
	}
	if _, ok := f.DebFilePath(ins[0]); ok {
		t.Fatal("a mismatching .deb entered the store")
	}

	// Gone everywhere: ErrGone, naming both sources.
	reset(map[string][]byte{})
	_, err = fetcher().DebFile(context.Background(), ins[0])
	if !errors.Is(err, fetch.ErrGone) || !strings.Contains(err.Error(), snapPath) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("gone: %v", err)
	}

	// A server error is not "gone": the fix is a retry, not a new pin.
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) })
	_, err = fetcher().DebFile(context.Background(), ins[0])
	if err == nil || errors.Is(err, fetch.ErrGone) || !errors.Is(err, fetch.ErrNoSource) {
		t.Fatalf("503: %v", err)
	}
}

// TestDebPinGone: a deb: pin whose version apt no longer finds, with a
// snapshot fallback that does not have it either, is ErrGone.
func TestDebPinGone(t *testing.T) {
	apt := filepath.Join(t.TempDir(), "apt-get")
	os.WriteFile(apt, []byte("#!/bin/sh\necho \"E: Version '1.0-1' for 'kiln-hello' was not found\" >&2\nexit 100\n"), 0o755)
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	st, _ := store.Open(t.TempDir())
	f := &fetch.Fetcher{Store: st, HTTP: srv.Client(), APTGet: apt}
	in := recipes.Input{Name: "kiln-hello", SHA256: strings.Repeat("ab", 32),
		Sources: []string{"deb:kiln-hello=1.0-1", srv.URL + "/archive/debian/20261203T180000Z/pool/main/k/kiln-hello/kiln-hello_1.0-1_amd64.deb"}}
	_, err := f.Input(context.Background(), in)
	if !errors.Is(err, fetch.ErrGone) || !errors.Is(err, fetch.ErrAPT) || !strings.Contains(err.Error(), "was not found") {
		t.Fatalf("%v", err)
	}
}

// TestPrefetchDebs: one apt-get run brings every deb: pin of a lock; a
// file with another sha256 is not stored (DebFile then reports it).
func TestPrefetchDebs(t *testing.T) {
	dir := t.TempDir()
	good := debtest.Build(t, dir, debtest.Deb{Name: "kiln-a", Version: "1.0-1", Arch: "amd64"})
	other := debtest.Build(t, dir, debtest.Deb{Name: "kiln-b", Version: "1.0-1", Arch: "amd64"})
	sumA, _ := store.HashFile(good)
	log := filepath.Join(dir, "calls")
	apt := filepath.Join(dir, "apt-get")
	// A stand-in apt-get: records its call, "downloads" both files.
	os.WriteFile(apt, []byte("#!/bin/sh\necho \"$@\" >> "+log+"\ncp "+good+" "+other+" .\n"), 0o755)
	st, _ := store.Open(t.TempDir())
	f := &fetch.Fetcher{Store: st, APTGet: apt}
	host, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Skip("no dpkg")
	}
	arch := strings.TrimSpace(string(host))
	ins := []recipes.Input{
		{Name: "deb-kiln-a", SHA256: sumA, File: filepath.Base(good), Sources: []string{"deb:kiln-a:" + arch + "=1.0-1"}},
		{Name: "deb-kiln-b", SHA256: strings.Repeat("0", 64), File: filepath.Base(other), Sources: []string{"deb:kiln-b:" + arch + "=1.0-1"}},
	}
	if err := f.PrefetchDebs(context.Background(), ins); err != nil {
		t.Fatal(err)
	}
	calls, _ := os.ReadFile(log)
	if strings.Count(string(calls), "download") != 1 || !strings.Contains(string(calls), "kiln-a=1.0-1 kiln-b=1.0-1") {
		t.Fatalf("apt-get calls: %q", calls)
	}
	if p, ok := f.DebFilePath(ins[0]); !ok {
		t.Fatal("kiln-a not stored")
	} else if s, _ := store.HashFile(p); s != sumA {
		t.Fatal("kiln-a stored with other content")
	}
	if _, ok := f.DebFilePath(ins[1]); ok {
		t.Fatal("kiln-b stored although its sha256 does not match")
	}
}

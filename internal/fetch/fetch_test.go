package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func newFetcher(t *testing.T) (*Fetcher, *[]string) {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log []string
	return &Fetcher{Store: s, Log: func(f string, a ...any) { mu.Lock(); log = append(log, fmt.Sprintf(f, a...)); mu.Unlock() }}, &log
}

// emptyStore fails the test if the store holds anything: no entry, no leftover.
func emptyStore(t *testing.T, s *store.Store) {
	t.Helper()
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("store holds %s", e.Name())
	}
}

// server is a local TLS server: /good serves good, /bad other bytes,
// anything else 404. It counts requests per path.
func server(t *testing.T, good []byte) (*httptest.Server, map[string]int) {
	var mu sync.Mutex
	hits := map[string]int{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		switch r.URL.Path {
		case "/good", "/pkg.deb":
			w.Write(good)
		case "/bad":
			w.Write(append([]byte("tampered "), good...))
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-client case is expected
	t.Cleanup(srv.Close)
	return srv, hits
}

func TestFetchHTTPS(t *testing.T) {
	body := []byte("optiboot image bytes\n")
	srv, hits := server(t, body)
	f, lines := newFetcher(t)
	f.HTTP = srv.Client()
	in := recipes.Input{Name: "blob", SHA256: sha256hex(body), File: "optiboot.hex",
		Sources: []string{srv.URL + "/bad", srv.URL + "/missing", srv.URL + "/good"}}
	p, err := f.Input(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(p, "optiboot.hex")); err != nil || string(b) != string(body) {
		t.Errorf("stored %q, %v", b, err)
	}
	if hits["/bad"] != 1 || hits["/missing"] != 1 || hits["/good"] != 1 {
		t.Errorf("requests %v", hits)
	}
	all := strings.Join(*lines, "\n")
	if !strings.Contains(all, "sha256 mismatch: expected "+in.SHA256) || !strings.Contains(all, "404") {
		t.Errorf("log does not report the bad mirrors:\n%s", all)
	}
	if err := f.Store.Verify(p); err != nil {
		t.Error(err)
	}
	// A second fetch is a store hit: no request.
	if q, ok := f.InputPath(in); !ok || q != p {
		t.Errorf("InputPath = %s, %v", q, ok)
	}
	if _, err := f.Input(context.Background(), in); err != nil || hits["/good"] != 1 {
		t.Errorf("second fetch: %v, requests %v", err, hits)
	}
	// The server's certificate is not trusted by the default client.
	f2, _ := newFetcher(t)
	if _, err := f2.Input(context.Background(), in); err == nil || !errors.Is(err, ErrNoSource) {
		t.Errorf("untrusted TLS server: %v", err)
	}
	emptyStore(t, f2.Store)
}

func TestFetchHTTPSDeb(t *testing.T) {
	deb, _ := os.ReadFile(buildDeb(t, sampleTree(t), "xz"))
	srv, _ := server(t, deb)
	f, _ := newFetcher(t)
	f.HTTP = srv.Client()
	p, err := f.Input(context.Background(), recipes.Input{Name: "sample", SHA256: sha256hex(deb), Sources: []string{srv.URL + "/pkg.deb"}})
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(p, "usr/lib/x86_64-linux-gnu/l.so.1")); err != nil || target != "l.so.1.0" {
		t.Errorf("the .deb was not unpacked: %q, %v", target, err)
	}
}

func TestFetchFile(t *testing.T) {
	dir := t.TempDir()
	body := []byte("linker script\n")
	os.MkdirAll(filepath.Join(dir, "vendor"), 0o755)
	os.WriteFile(filepath.Join(dir, "vendor", "x.ld"), body, 0o644)
	for name, src := range map[string]string{"relative": "file:vendor/x.ld", "absolute": "file:" + filepath.Join(dir, "vendor", "x.ld")} {
		t.Run(name, func(t *testing.T) {
			f, _ := newFetcher(t)
			in := recipes.Input{Name: "ld", SHA256: sha256hex(body), Sources: []string{"file:missing", src}, Dir: dir}
			p, err := f.Input(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(p, "ld")); string(b) != string(body) {
				t.Errorf("stored %q", b)
			}
		})
	}
	t.Run("executable", func(t *testing.T) {
		f, _ := newFetcher(t)
		plain := recipes.Input{Name: "gen", SHA256: sha256hex(body), Sources: []string{"file:vendor/x.ld"}, Dir: dir}
		exe := plain
		exe.Executable = true
		if plain.StoreKey() == exe.StoreKey() {
			t.Error("executable does not change the store key")
		}
		for in, mode := range map[*recipes.Input]os.FileMode{&plain: 0o444, &exe: 0o555} {
			p, err := f.Input(context.Background(), *in)
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(filepath.Join(p, "gen")); err != nil {
				t.Error(err)
			} else if fi.Mode().Perm() != mode {
				t.Errorf("executable=%v: mode %v, want %v", in.Executable, fi.Mode().Perm(), mode)
			}
		}
	})
}

// TestFetchMismatch: no source has the pinned content. The error names the
// expected and actual hashes, wraps ErrHashMismatch, and the store is empty.
func TestFetchMismatch(t *testing.T) {
	body := []byte("the real thing")
	srv, _ := server(t, body)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "local"), []byte("something else"), 0o644)
	f, _ := newFetcher(t)
	f.HTTP = srv.Client()
	want := sha256hex([]byte("what the recipe pinned"))
	in := recipes.Input{Name: "blob", SHA256: want, Dir: dir, Sources: []string{"file:local", srv.URL + "/good"}}
	_, err := f.Input(context.Background(), in)
	if !errors.Is(err, recipes.ErrHashMismatch) {
		t.Fatalf("err = %v, want ErrHashMismatch", err)
	}
	msg := err.Error()
	for _, s := range []string{"expected " + want, "got " + sha256hex([]byte("something else")), "got " + sha256hex(body), "file:local", srv.URL} {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not say %q: %s", s, msg)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	emptyStore(t, f.Store)

	// Nothing reachable at all is ErrNoSource, not a mismatch.
	_, err = f.Input(context.Background(), recipes.Input{Name: "blob", SHA256: want, Dir: dir, Sources: []string{"file:nothing", srv.URL + "/missing"}})
	if !errors.Is(err, ErrNoSource) || errors.Is(err, recipes.ErrHashMismatch) {
		t.Errorf("err = %v, want ErrNoSource", err)
	}
	emptyStore(t, f.Store)
}

// TestFetchDeb gets a real package with the host's apt client.
func TestFetchDeb(t *testing.T) {
	realDeb(t, "arduino-core-avr") // skips if there is no apt-get
	f, lines := newFetcher(t)
	in := recipes.Input{Name: "arduino-core-avr", SHA256: "357869fa1f5a122ea06f470b9a88d2e5d27dd52afb0de0578ecd1b72d6b5c8c4",
		Sources: []string{"deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"}}
	p, err := f.Input(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "usr/share/arduino/hardware/arduino/avr/cores/arduino/Arduino.h")); err != nil {
		t.Error(err)
	}
	if !strings.Contains(strings.Join(*lines, "\n"), "fetch arduino-core-avr from deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1") {
		t.Errorf("log: %q", *lines)
	}
	// A warm fetch needs neither apt nor the network.
	f.APTGet = "/bin/false"
	if q, err := f.Input(context.Background(), in); err != nil || q != p {
		t.Errorf("warm fetch = %s, %v", q, err)
	}
	// A wrong pin for the same package: apt delivers, the hash refuses it.
	f.APTGet = ""
	bad := in
	bad.Name, bad.SHA256 = "core-bad-pin", strings.Repeat("0", 64)
	if _, err := f.Input(context.Background(), bad); !errors.Is(err, recipes.ErrHashMismatch) ||
		!strings.Contains(err.Error(), "got "+in.SHA256) {
		t.Errorf("bad pin: %v", err)
	}
	if _, ok := f.InputPath(bad); ok {
		t.Error("a mismatching package entered the store")
	}
}

func TestFetchAPTFailure(t *testing.T) {
	realDeb(t, "zlib1g") // skips if there is no apt-get
	f, _ := newFetcher(t)
	_, err := f.Input(context.Background(), recipes.Input{Name: "nope", SHA256: strings.Repeat("0", 64),
		Sources: []string{"deb:kiln-no-such-package=1.0"}})
	if !errors.Is(err, ErrAPT) {
		t.Fatalf("err = %v, want ErrAPT", err)
	}
	if !strings.Contains(err.Error(), "kiln-no-such-package") {
		t.Errorf("error does not name the package: %v", err)
	}
	emptyStore(t, f.Store)
}

func TestFetchCanceled(t *testing.T) {
	f, _ := newFetcher(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.Input(ctx, recipes.Input{Name: "x", SHA256: strings.Repeat("0", 64), Sources: []string{"deb:zlib1g=1:1.2.13.dfsg-1"}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	emptyStore(t, f.Store)
}

// TestToolchainMerge: the packages of a closure are unpacked into one tree
// with the closure's links; a closure whose packages conflict, or one of
// whose packages does not match its pin, leaves nothing in the store.
func TestToolchainMerge(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, files map[string]string) recipes.Input {
		tree := t.TempDir()
		for p, body := range files {
			os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755)
			os.WriteFile(filepath.Join(tree, p), []byte(body), 0o755)
		}
		deb := buildDeb(t, tree, "gzip")
		b, _ := os.ReadFile(deb)
		os.Rename(deb, filepath.Join(dir, name+".deb"))
		return recipes.Input{Name: name, SHA256: sha256hex(b), Sources: []string{"file:" + filepath.Join(dir, name+".deb")}}
	}
	gcc := mk("fake-gcc", map[string]string{"usr/bin/fake-gcc": "#!/bin/sh\n", "usr/lib/fake/x": "same"})
	libc := mk("fake-libc", map[string]string{"usr/lib/fake/newlib/libc.a": "!<arch>\n", "usr/include/newlib/stdio.h": "", "usr/lib/fake/x": "same"})
	tc := &recipes.Toolchain{Name: "fake-1", Arch: "avr", Prefix: "fake-", BinDir: "usr/bin",
		Packages: []recipes.Input{gcc, libc},
		Links:    map[string]string{"usr/lib/fake/lib": "newlib", "usr/lib/fake/include": "../../include/newlib"}}
	if err := tc.Validate(); err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(t)
	p, err := f.Toolchain(context.Background(), tc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"usr/bin/fake-gcc", "usr/lib/fake/lib/libc.a", "usr/lib/fake/include/stdio.h", "usr/lib/fake/x"} {
		if _, err := os.Stat(filepath.Join(p, want)); err != nil {
			t.Errorf("merged tree: %v", err)
		}
	}
	if q, ok := f.ToolchainPath(tc); !ok || q != p || filepath.Base(p) != tc.Hash()[:32]+"-fake-1" {
		t.Errorf("ToolchainPath = %s, %v (stored at %s)", q, ok, p)
	}
	if err := f.Store.Verify(p); err != nil {
		t.Error(err)
	}

	conflict := mk("fake-conflict", map[string]string{"usr/lib/fake/x": "different"})
	for name, pkgs := range map[string][]recipes.Input{
		"conflict": {gcc, conflict},
		"bad pin":  {gcc, {Name: "fake-libc", SHA256: strings.Repeat("1", 64), Sources: libc.Sources}},
	} {
		f, _ := newFetcher(t)
		bad := &recipes.Toolchain{Name: "fake-2", Arch: "avr", Prefix: "fake-", BinDir: "usr/bin", Packages: pkgs}
		if _, err := f.Toolchain(context.Background(), bad); err == nil {
			t.Errorf("%s: fetched", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
		emptyStore(t, f.Store)
	}
}

// TestFetchStalledMirror: a mirror that stops sending is abandoned after
// StallTimeout and the next one serves the input.
func TestFetchStalledMirror(t *testing.T) {
	body := []byte("firmware blob\n")
	release := make(chan struct{})
	slow := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		select { // then nothing, until the client gives up
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer slow.Close()
	defer close(release)
	good, _ := server(t, body)
	f, lines := newFetcher(t)
	f.HTTP = slow.Client()
	f.HTTP.Transport.(*http.Transport).TLSClientConfig.RootCAs.AddCert(good.Certificate())
	f.StallTimeout = 300 * time.Millisecond
	in := recipes.Input{Name: "blob", SHA256: sha256hex(body), Sources: []string{slow.URL + "/stall", good.URL + "/good"}}
	p, err := f.Input(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(p, "blob")); string(b) != string(body) {
		t.Errorf("stored %q", b)
	}
	if all := strings.Join(*lines, "\n"); !strings.Contains(all, "download stalled: nothing for 300ms") {
		t.Errorf("log does not report the stall:\n%s", all)
	}
}

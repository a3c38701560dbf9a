package fetch_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/internal/debian/debtest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// TestDebPinFallsBackToSnapshot: a legacy deb: pin (no lock, no pool path)
// gets its snapshot fallback from ResolvePin, and the fetcher tries the
// main archive (through apt) first, then the snapshot copy, checking the
// sha256 either way. One local server plays both: Debian's archive over
// HTTP for apt, the snapshot archive over HTTPS for kiln.
func TestDebPinFallsBackToSnapshot(t *testing.T) {
	debtest.Need(t, "apt-get", "apt-cache", "dpkg")
	repo := t.TempDir()
	hello := debtest.Deb{Name: "kiln-hello", Version: "1:1.0-1", Files: map[string]string{"usr/share/doc/kiln-hello/README": "hello 1.0\n"}}
	debtest.Repo(t, repo, "bookworm", []debtest.Deb{hello})
	pool := "pool/main/k/kiln-hello/kiln-hello_1.0-1_arm64.deb"
	content, err := os.ReadFile(filepath.Join(repo, pool))
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := store.HashFile(filepath.Join(repo, pool))

	var mu sync.Mutex
	var asked []string
	snapshot := map[string][]byte{} // the snapshot archive's files, by URL path
	files := http.StripPrefix("/debian", http.FileServer(http.Dir(repo)))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		body, ok := snapshot[r.URL.Path]
		mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/debian/"):
			files.ServeHTTP(w, r)
		case ok && body == nil:
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case ok:
			w.Write(body)
		default:
			http.NotFound(w, r)
		}
	})
	archive := httptest.NewServer(handler)
	defer archive.Close()
	snap := httptest.NewTLSServer(handler)
	defer snap.Close()
	etc := t.TempDir()
	if err := os.WriteFile(filepath.Join(etc, "sources.list"), []byte("deb [trusted=yes] "+archive.URL+"/debian bookworm main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(old string) { fetch.HostSources = old }(fetch.HostSources)
	fetch.HostSources = etc
	fetcher := func() *fetch.Fetcher {
		st, err := store.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return &fetch.Fetcher{Store: st, HTTP: snap.Client(), SnapshotBase: snap.URL}
	}
	reset := func(m map[string][]byte) {
		mu.Lock()
		snapshot, asked = m, nil
		mu.Unlock()
	}
	ctx := context.Background()
	const src = "deb:kiln-hello:arm64=1:1.0-1@bookworm/main"

	// Where the pinned version is: pool path from apt, archive "debian"
	// from its URI, time = the Release file's Date (1 Dec 2026 00:00 UTC) + 12 h.
	p, err := fetcher().ResolvePin(ctx, src, false)
	if err != nil {
		t.Fatal(err)
	}
	snapPath := "/archive/debian/20261201T120000Z/" + pool
	if p.Source != src || p.SHA256 != sum || p.Filename != pool || p.Archive != "debian" || p.Snapshot != snap.URL+snapPath {
		t.Fatalf("ResolvePin = %+v", p)
	}
	in := recipes.Input{Name: "hello", SHA256: sum, Sources: recipes.PinnedSources([]string{src}, p.Source, p.Snapshot)}

	// The archive has it: apt fetches it, the snapshot is not asked.
	reset(map[string][]byte{snapPath: content})
	if _, err := fetcher().Input(ctx, in); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(asked, " "); !strings.Contains(got, "/debian/"+pool) || strings.Contains(got, "/archive/") {
		t.Fatalf("asked %s", got)
	}

	// A point release: 1.0-1 leaves the archive, 1.1-1 replaces it.
	hello.Version, hello.Files = "1:1.1-1", map[string]string{"usr/share/doc/kiln-hello/README": "hello 1.1\n"}
	debtest.Repo(t, repo, "bookworm", []debtest.Deb{hello})
	if err := os.Remove(filepath.Join(repo, pool)); err != nil {
		t.Fatal(err)
	}
	reset(map[string][]byte{snapPath: content})
	f := fetcher()
	dir, err := f.Input(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/share/doc/kiln-hello/README")); string(b) != "hello 1.0\n" {
		t.Fatalf("fallback content %q", b)
	}
	if got := strings.Join(asked, " "); !strings.HasSuffix(got, snapPath) {
		t.Fatalf("asked %s", got)
	}
	// ResolvePin now says the version is gone, and finds the new one.
	if _, err := f.ResolvePin(ctx, src, false); !errors.Is(err, fetch.ErrNotInArchive) {
		t.Fatalf("gone version: %v", err)
	}
	np, err := f.ResolvePin(ctx, src, true)
	if err != nil || np.Version != "1:1.1-1" || np.Source != "deb:kiln-hello:arm64=1:1.1-1@bookworm/main" || np.SHA256 == sum ||
		np.Snapshot != snap.URL+"/archive/debian/20261201T120000Z/pool/main/k/kiln-hello/kiln-hello_1.1-1_arm64.deb" {
		t.Fatalf("latest = %+v, %v", np, err)
	}

	// The snapshot serves other bytes: refused, nothing stored.
	reset(map[string][]byte{snapPath: append([]byte("x"), content...)})
	f = fetcher()
	if _, err := f.Input(ctx, in); !errors.Is(err, recipes.ErrHashMismatch) || errors.Is(err, fetch.ErrGone) {
		t.Fatalf("wrong bytes: %v", err)
	}
	if _, ok := f.InputPath(in); ok {
		t.Fatal("a mismatching .deb entered the store")
	}

	// Gone from both: the error says so first, then each source's answer.
	reset(map[string][]byte{})
	_, err = fetcher().Input(ctx, in)
	if !errors.Is(err, fetch.ErrGone) || !strings.HasPrefix(err.Error(), "fetch: hello: pinned version is gone from every source (") ||
		!strings.Contains(err.Error(), "was not found") || !strings.Contains(err.Error(), "404") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("gone: %v", err)
	}

	// Gone from the archive, the snapshot out of reach: not "gone" (a
	// retry with the network may work), but said.
	reset(map[string][]byte{snapPath: nil})
	_, err = fetcher().Input(ctx, in)
	if !errors.Is(err, fetch.ErrPartlyGone) || errors.Is(err, fetch.ErrGone) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("gone, fallback unreachable: %v", err)
	}
}

package firmware_test

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/cli"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// cliEnv makes the test binary act as the kiln command (so tests can run it
// under `unshare -n` and time it as a process).
const cliEnv = "KILN_FIRMWARE_TEST_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(cliEnv) == "1" {
		os.Exit(cli.Main(context.Background(), append([]string{"kiln"}, os.Args[1:]...), os.Stdin, os.Stdout, os.Stderr))
	}
	code := m.Run()
	if shared.dir != "" {
		makeWritable(shared.dir)
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// exampleRecipes are the recipes shipped in recipes/.
var exampleRecipes = []string{"blink-uno", "blink-mega2560", "blink-nucleo-f401re", "blink-bluepill"}

func recipeDir(name string) string { return filepath.Join("..", "recipes", name) }

// The toolchains and inputs are fetched once into the cache store ($KILN_STORE
// or the default store, as a user's kiln would) and hard-linked into the
// fresh stores the tests build in: same content, same hashes, verified by
// the store like any entry.
var cache struct {
	once     sync.Once
	err      error
	entries  []string
	byRecipe map[string][]string
}

// fetchedEntries returns the store entries (in the cache store) of the
// toolchains and inputs of the named example recipes, or of all of them.
func fetchedEntries(t testing.TB, names ...string) []string {
	t.Helper()
	cache.once.Do(func() {
		s, err := store.Open("")
		if err != nil {
			cache.err = err
			return
		}
		f := &fetch.Fetcher{Store: s}
		ctx := context.Background()
		seen := map[string]bool{}
		cache.byRecipe = map[string][]string{}
		for _, name := range exampleRecipes {
			r, err := recipes.Load(recipeDir(name))
			if err != nil {
				cache.err = err
				return
			}
			tc, err := recipes.LoadToolchain(r.Toolchain)
			if err != nil {
				cache.err = err
				return
			}
			paths, err := fetchClosure(ctx, f, tc, r.Inputs)
			if err != nil {
				cache.err = err
				return
			}
			cache.byRecipe[name] = paths
			for _, p := range paths {
				if !seen[p] {
					seen[p] = true
					cache.entries = append(cache.entries, p)
				}
			}
		}
	})
	if cache.err != nil {
		t.Fatalf("fetch toolchains and inputs: %v", cache.err)
	}
	if len(names) == 0 {
		return cache.entries
	}
	var out []string
	for _, n := range names {
		out = append(out, cache.byRecipe[n]...)
	}
	return out
}

// fetchClosure fetches a toolchain and inputs and returns every store entry
// they are made of.
func fetchClosure(ctx context.Context, f *fetch.Fetcher, tc *recipes.Toolchain, ins []recipes.Input) ([]string, error) {
	var paths []string
	p, err := f.Toolchain(ctx, tc)
	if err != nil {
		return nil, err
	}
	paths = append(paths, p)
	for _, in := range ins {
		p, err := f.Input(ctx, in)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// newStore makes a store in a temporary directory holding the fetched
// toolchains and inputs of the named example recipes (all if none named).
func newStore(t testing.TB, recipes ...string) *store.Store {
	t.Helper()
	entries := fetchedEntries(t, recipes...)
	dir := t.TempDir()
	t.Cleanup(func() { makeWritable(dir) })
	return seededStore(t, dir, entries)
}

func seededStore(t testing.TB, dir string, entries []string) *store.Store {
	t.Helper()
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := linkTree(e, filepath.Join(s.Root, filepath.Base(e))); err != nil {
			t.Fatalf("seed store: %v", err)
		}
	}
	return s
}

// linkTree recreates the tree at src at dst with hard links for files,
// keeping every mode (directories get theirs back last, as they may be
// read-only).
func linkTree(src, dst string) error {
	type dirMode struct {
		path string
		mode fs.FileMode
	}
	var dirs []dirMode
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, dirMode{to, info.Mode().Perm()})
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		default:
			if err := os.Link(p, to); err != nil {
				return copyFile(p, to, info.Mode().Perm())
			}
			return nil
		}
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i].path, dirs[i].mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode fs.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// makeWritable lets t.TempDir's clean-up remove read-only store entries.
func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

// listStore returns the names in a store's root: its entries and any
// temporary directories, all but the verification stamps (verifiedDir),
// which describe entries already there.
func listStore(t testing.TB, s *store.Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != ".verified" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

// shared is one store the tests that only need "a build of recipe X" use,
// so each example recipe is built once per test run.
var shared struct {
	mu    sync.Mutex
	dir   string
	store *store.Store
	built map[string]*firmware.Result
}

func sharedBuild(t *testing.T, name string) *firmware.Result {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.store == nil {
		dir, err := os.MkdirTemp("", "kiln-firmware-test-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		shared.store = seededStore(t, dir, fetchedEntries(t))
		shared.built = map[string]*firmware.Result{}
	}
	if r := shared.built[name]; r != nil {
		return r
	}
	res, err := firmware.Build(context.Background(), firmware.Options{Dir: recipeDir(name), Store: shared.store})
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	shared.built[name] = res
	return res
}

// sharedStore returns the shared store (seeded with every toolchain).
func sharedStore(t *testing.T) *store.Store {
	t.Helper()
	sharedBuild(t, "blink-uno")
	return shared.store
}

// storeWith makes an empty store (no toolchain, no input) holding only
// copies of the given entries.
func storeWith(t *testing.T, entries ...string) *store.Store {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { makeWritable(dir) })
	return seededStore(t, dir, entries)
}

// runKiln runs the kiln CLI in this process.
func runKiln(args ...string) (code int, stdout, stderr string) {
	var o, e strings.Builder
	code = cli.Main(context.Background(), append([]string{"kiln"}, args...), strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

// kilnCommand runs the kiln CLI as a process (this test binary in CLI mode).
func kilnCommand(ctx context.Context, prefix []string, args ...string) *exec.Cmd {
	self, _ := os.Executable()
	argv := append(append(append([]string(nil), prefix...), self), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	return cmd
}

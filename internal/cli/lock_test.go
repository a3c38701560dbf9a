package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/debian"
	"kiln.dev/kiln/internal/debian/debtest"
)

const lockRecipe = `name = "rootfs-lock-test"
version = "1.0.0"
kind = "image"
board = "rpi-3b"

[image]
table = "mbr"
size = "16MiB"
source_date_epoch = 1751414400

[image.rootfs]
arch = "arm64"
suites = ["bookworm"]
components = ["main"]
packages = ["kiln-app"]
mirror = "file:REPO"
trusted = true

[[image.partitions]]
name = "root"
fs = "ext4"
size = "8MiB"
`

// TestLockCLI: kiln lock writes rootfs.lock, keeps a lock that matches,
// and --update reports a point release of the test archive.
func TestLockCLI(t *testing.T) {
	debtest.Need(t, "apt-get")
	repo, dir, st := t.TempDir(), t.TempDir(), t.TempDir()
	debs := []debtest.Deb{
		{Name: "kiln-app", Version: "1.0-1", Fields: map[string]string{"Depends": "kiln-lib (>= 2)"}},
		{Name: "kiln-lib", Version: "2.0-1", Source: "kiln-libs"},
	}
	debtest.Repo(t, repo, "bookworm", debs)
	if err := os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(strings.ReplaceAll(lockRecipe, "REPO", repo)), 0o644); err != nil {
		t.Fatal(err)
	}
	res := runKiln(t, nil, "hash", dir)
	if res.code != 1 || !strings.Contains(res.stderr, "not locked") {
		t.Fatalf("hash before lock: %d %s", res.code, res.stderr)
	}
	res = runKiln(t, nil, "lock", "--store", st, dir)
	if res.code != 0 || !strings.Contains(res.stdout, "written: 2 packages") || !strings.Contains(res.stdout, "added      kiln-lib:arm64 2.0-1") {
		t.Fatalf("first lock: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	first, err := os.ReadFile(filepath.Join(dir, "rootfs.lock"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := debian.ParseLock(first)
	if err != nil || l.Packages[0].Name != "kiln-lib" || l.Packages[0].Source != "kiln-libs" {
		t.Fatalf("lock: %v %+v", err, l)
	}
	h1 := runKiln(t, nil, "hash", dir)
	if h1.code != 0 {
		t.Fatalf("hash: %s", h1.stderr)
	}
	// The archive moves on; kiln lock alone keeps the lock.
	debs[1].Version = "2.1-1"
	debtest.Repo(t, repo, "bookworm", debs)
	res = runKiln(t, nil, "lock", "--store", st, dir)
	if res.code != 0 || !strings.Contains(res.stdout, "up to date") {
		t.Fatalf("second lock: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "rootfs.lock")); string(now) != string(first) {
		t.Fatal("kiln lock rewrote a lock that matches its recipe")
	}
	res = runKiln(t, nil, "lock", "--update", "--json", "--store", st, dir)
	var rep struct {
		Written bool
		Changes []debian.Change
	}
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || res.code != 0 {
		t.Fatalf("lock --update: %d %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	if len(rep.Changes) != 1 || rep.Changes[0] != (debian.Change{Kind: "upgraded", Name: "kiln-lib", Arch: "arm64", Old: "2.0-1", New: "2.1-1"}) {
		t.Fatalf("changes: %+v", rep.Changes)
	}
	if h2 := runKiln(t, nil, "hash", dir); h2.code != 0 || h2.stdout == h1.stdout {
		t.Fatalf("derivation did not change with the lock: %s %s", h1.stdout, h2.stdout)
	}
	// kiln fetch brings every locked .deb into the store, checked.
	res = runKiln(t, nil, "fetch", "--store", st, dir)
	if res.code != 0 || strings.Count(res.stdout, "deb\tdeb-kiln-") != 2 {
		t.Fatalf("fetch: %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	// A lock whose sha256 does not match the .deb: refused, nothing stored.
	lockText, _ := os.ReadFile(filepath.Join(dir, "rootfs.lock"))
	var lk debian.Lock
	json.Unmarshal(lockText, &lk)
	lk.Packages[0].SHA256 = strings.Repeat("0", 64)
	os.WriteFile(filepath.Join(dir, "rootfs.lock"), lk.Marshal(), 0o644)
	st2 := t.TempDir()
	res = runKiln(t, nil, "fetch", "--store", st2, dir)
	if res.code != 1 || !strings.Contains(res.stderr, "sha256 mismatch") || !strings.Contains(res.stderr, "hint:") {
		t.Fatalf("fetch with a wrong sha256: %d\n%s", res.code, res.stderr)
	}
	if ents, _ := os.ReadDir(st2); len(ents) > 0 {
		for _, e := range ents {
			if strings.Contains(e.Name(), "deb-kiln-lib") {
				t.Fatalf("a mismatching .deb entered the store: %s", e.Name())
			}
		}
	}
	os.WriteFile(filepath.Join(dir, "rootfs.lock"), lockText, 0o644)

	// A package that does not exist: apt's words, a hint, exit 1, the lock untouched.
	before, _ := os.ReadFile(filepath.Join(dir, "rootfs.lock"))
	bad := strings.ReplaceAll(strings.ReplaceAll(lockRecipe, "REPO", repo), `["kiln-app"]`, `["kiln-app", "kiln-nonesuch"]`)
	os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(bad), 0o644)
	res = runKiln(t, nil, "lock", "--store", st, dir)
	if res.code != 1 || !strings.Contains(res.stderr, "Unable to locate package kiln-nonesuch") || !strings.Contains(res.stderr, "hint:") {
		t.Fatalf("missing package: %d\n%s", res.code, res.stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "rootfs.lock")); string(after) != string(before) {
		t.Fatal("a failed lock changed rootfs.lock")
	}
	if res := runKiln(t, nil, "hash", dir); res.code != 1 || !strings.Contains(res.stderr, "not locked") {
		t.Fatalf("hash with a stale lock: %d %s", res.code, res.stderr)
	}
}

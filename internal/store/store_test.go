package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const hashA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fillTree writes a small tree: a file, an executable, a subdirectory and a symlink.
func fillTree(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "usr", "bin"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "usr", "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "data.txt"), []byte("hello\n"), 0o644); err != nil {
		return err
	}
	return os.Symlink("usr/bin/tool", filepath.Join(dir, "link"))
}

func leftovers(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestOpenDefault(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "from-env")
	t.Setenv("KILN_STORE", dir)
	s, err := Open("")
	if err != nil || s.Root != dir {
		t.Fatalf("Open(\"\") = %v, %v; want root %s", s, err, dir)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("root not created: %v", err)
	}
	t.Setenv("KILN_STORE", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CACHE_HOME", "")
	s, err = Open("")
	if err != nil || s.Root != filepath.Join(os.Getenv("HOME"), ".cache", "kiln", "store") {
		t.Errorf("default root = %v, %v", s, err)
	}
}

func TestAddLookupVerify(t *testing.T) {
	s := newStore(t)
	if _, ok := s.Lookup(hashA, "tree"); ok {
		t.Fatal("entry exists before Add")
	}
	p, err := s.Add(hashA, "tree", fillTree)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(s.Root, hashA[:32]+"-tree"); p != want || s.Path(hashA, "tree") != want {
		t.Errorf("path %s, want %s", p, want)
	}
	if got, ok := s.Lookup(hashA, "tree"); !ok || got != p {
		t.Errorf("Lookup = %s, %v", got, ok)
	}
	if err := s.Verify(p); err != nil {
		t.Errorf("Verify of a fresh entry: %v", err)
	}
	// Read-only: no write bit anywhere, executables still executable.
	filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink == 0 && fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable: %v", q, fi.Mode())
		}
		return nil
	})
	if fi, _ := os.Stat(filepath.Join(p, "usr/bin/tool")); fi.Mode().Perm() != 0o555 {
		t.Errorf("tool mode %v", fi.Mode())
	}
	m, err := ReadManifest(p)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range m.Files {
		got = append(got, fmt.Sprintf("%s %s %s %s%s", f.Path, f.Type, f.Mode, f.SHA256, f.Target))
	}
	want := []string{
		"data.txt file 0444 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
		"link symlink  usr/bin/tool",
		"usr dir 0555 ",
		"usr/bin dir 0555 ",
		"usr/bin/tool file 0555 " + sha("#!/bin/sh\necho hi\n"),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("manifest:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if m.Hash != hashA || m.Name != "tree" {
		t.Errorf("manifest names %s-%s", m.Hash, m.Name)
	}
	// A second Add is a hit: fill is not called.
	p2, err := s.Add(hashA, "tree", func(string) error { t.Error("fill called for an existing entry"); return nil })
	if err != nil || p2 != p {
		t.Errorf("second Add = %s, %v", p2, err)
	}
	if l := leftovers(t, s); len(l) != 0 {
		t.Errorf("leftovers %v", l)
	}
}

func sha(s string) string {
	f, _ := os.CreateTemp("", "sha")
	defer os.Remove(f.Name())
	f.WriteString(s)
	f.Close()
	h, _ := HashFile(f.Name())
	return h
}

// TestReadOnlyForOthers checks the entry's modes with a real unprivileged
// process (the tests run as root, who ignores modes).
func TestReadOnlyForOthers(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and util-linux setpriv to act as another user")
	}
	base := t.TempDir()
	for d := base; d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // let nobody walk to the store
		if d == os.TempDir() {
			break
		}
	}
	s, err := Open(filepath.Join(base, "store"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Add(hashA, "tree", fillTree)
	if err != nil {
		t.Fatal(err)
	}
	for _, script := range []string{
		"echo x >> " + filepath.Join(p, "data.txt"),
		"touch " + filepath.Join(p, "new"),
		"rm -f " + filepath.Join(p, "data.txt"),
		"mv " + p + " " + p + ".moved",
	} {
		cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("nobody could run %q: %s", script, out)
		}
	}
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "cat", filepath.Join(p, "data.txt"))
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "hello\n" {
		t.Errorf("nobody cannot read the entry: %v %s", err, out)
	}
	if err := s.Verify(p); err != nil {
		t.Error(err)
	}
}

func TestFillFailureLeavesNothing(t *testing.T) {
	s := newStore(t)
	boom := errors.New("boom")
	_, err := s.Add(hashA, "tree", func(dir string) error {
		if err := fillTree(dir); err != nil {
			return err
		}
		os.Chmod(filepath.Join(dir, "usr"), 0o555) // even a read-only half-tree goes
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if _, ok := s.Lookup(hashA, "tree"); ok {
		t.Error("entry exists after a failed fill")
	}
	ents, _ := os.ReadDir(s.Root)
	if len(ents) != 0 {
		t.Errorf("store holds %d files after a failed fill", len(ents))
	}
	// Special files cannot enter the store.
	_, err = s.Add(hashA, "fifo", func(dir string) error { return exec.Command("mkfifo", filepath.Join(dir, "p")).Run() })
	if err == nil || !strings.Contains(err.Error(), "cannot enter the store") {
		t.Errorf("fifo: %v", err)
	}
	if ents, _ := os.ReadDir(s.Root); len(ents) != 0 {
		t.Errorf("store holds %d files after a refused fill", len(ents))
	}
}

func TestBadKeys(t *testing.T) {
	s := newStore(t)
	for _, k := range [][2]string{{"xyz", "n"}, {hashA[:31], "n"}, {hashA, ""}, {hashA, "a/b"}, {hashA, "../x"}, {strings.ToUpper(hashA), "n"}} {
		if _, err := s.Add(k[0], k[1], fillTree); err == nil {
			t.Errorf("Add(%q, %q) accepted", k[0], k[1])
		}
	}
}

// TestVerifyDetects: each kind of tampering is found and named.
func TestVerifyDetects(t *testing.T) {
	cases := map[string]struct {
		tamper func(p string) error
		want   string
	}{
		"changed byte": {func(p string) error {
			f := filepath.Join(p, "data.txt")
			b, _ := os.ReadFile(f)
			b[0] ^= 1
			return os.WriteFile(f, b, 0o444)
		}, "data.txt: content changed"},
		"removed file": {func(p string) error { return os.Remove(filepath.Join(p, "usr/bin/tool")) }, "usr/bin/tool: removed"},
		"added file":   {func(p string) error { return os.WriteFile(filepath.Join(p, "usr/extra"), nil, 0o444) }, "usr/extra: added"},
		"mode":         {func(p string) error { return os.Chmod(filepath.Join(p, "data.txt"), 0o555) }, "data.txt: mode 0555, want 0444"},
		"symlink": {func(p string) error {
			os.Remove(filepath.Join(p, "link"))
			return os.Symlink("/etc/passwd", filepath.Join(p, "link"))
		}, `link: symlink target "/etc/passwd"`},
		"file for symlink": {func(p string) error {
			os.Remove(filepath.Join(p, "link"))
			return os.WriteFile(filepath.Join(p, "link"), nil, 0o444)
		}, "link: was a symlink, is a file"},
		"manifest removed": {func(p string) error { return os.Remove(filepath.Join(p, ManifestName)) }, "no manifest"},
		"manifest garbled": {func(p string) error { return os.WriteFile(filepath.Join(p, ManifestName), []byte("{"), 0o444) }, "manifest"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			p, err := s.Add(hashA, "tree", fillTree)
			if err != nil {
				t.Fatal(err)
			}
			filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
				if err == nil && fi.IsDir() {
					os.Chmod(q, 0o755)
				}
				return nil
			})
			if err := c.tamper(p); err != nil {
				t.Fatal(err)
			}
			err = s.Verify(p)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("Verify = %v, want ErrTampered", err)
			}
			if !strings.Contains(err.Error(), filepath.Base(p)) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name the entry and %q", err, c.want)
			}
		})
	}
}

func TestVerifyManifestForAnotherEntry(t *testing.T) {
	s := newStore(t)
	p, err := s.Add(hashA, "tree", fillTree)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(s.Root, strings.Repeat("f", 32)+"-tree")
	if err := os.Rename(p, other); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(other); !errors.Is(err, ErrTampered) {
		t.Errorf("a renamed entry verified: %v", err)
	}
}

// TestConcurrentAdd: many Adds of one entry at once give one entry, the same
// path to every caller, and no leftovers.
func TestConcurrentAdd(t *testing.T) {
	s := newStore(t)
	var fills atomic.Int32
	var wg sync.WaitGroup
	paths := make([]string, 8)
	errs := make([]error, 8)
	start := make(chan struct{})
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			paths[i], errs[i] = s.Add(hashA, "tree", func(dir string) error {
				fills.Add(1)
				return fillTree(dir)
			})
		}()
	}
	close(start)
	wg.Wait()
	for i := range paths {
		if errs[i] != nil || paths[i] != paths[0] {
			t.Errorf("Add %d = %s, %v", i, paths[i], errs[i])
		}
	}
	if l := leftovers(t, s); len(l) != 0 {
		t.Errorf("leftovers %v", l)
	}
	list, _ := s.List()
	if len(list) != 1 {
		t.Errorf("%d entries", len(list))
	}
	if err := s.Verify(paths[0]); err != nil {
		t.Error(err)
	}
	t.Logf("%d of 8 Adds ran fill", fills.Load())
}

func TestListAndGC(t *testing.T) {
	s := newStore(t)
	hashB := strings.Repeat("b", 64)
	pa, err := s.Add(hashA, "alpha", fillTree)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := s.Add(hashB, "beta", fillTree)
	if err != nil {
		t.Fatal(err)
	}
	// Leftovers: one of a process that is gone, one of a live process (ours).
	dead := filepath.Join(s.Root, tmpPrefix+"2147483646-abc")
	live := filepath.Join(s.Root, tmpPrefix+fmt.Sprint(os.Getpid())+"-abc")
	for _, d := range []string{dead, live} {
		os.MkdirAll(filepath.Join(d, "sub"), 0o755)
		os.Chmod(filepath.Join(d, "sub"), 0o555)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].Name != "alpha" || list[1].Path != pb || list[0].Hash != hashA[:32] {
		t.Fatalf("List = %+v, %v", list, err)
	}
	removed, err := s.GC(func(e Entry) bool { return e.Hash == hashA[:32] })
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Name != "beta" {
		t.Errorf("removed %+v", removed)
	}
	if _, err := os.Stat(pb); !os.IsNotExist(err) {
		t.Errorf("beta still there: %v", err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("a dead process's leftover is still there: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live process's temporary directory was removed: %v", err)
	}
	if err := s.Verify(pa); err != nil {
		t.Errorf("kept entry: %v", err)
	}
	if removed, _ := s.GC(nil); len(removed) != 1 {
		t.Errorf("GC(nil) removed %+v", removed)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("after GC(nil): %+v", list)
	}
}

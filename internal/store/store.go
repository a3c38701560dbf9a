package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrTampered is returned (wrapped, naming the entry and the first bad
// file) by Verify when an entry no longer matches its manifest.
var ErrTampered = errors.New("store entry tampered")

// ManifestName is the file inside every entry that lists its content.
const ManifestName = ".kiln-entry.json"

// tmpPrefix starts the names of entries being written.
const tmpPrefix = ".tmp-"

var (
	entryRE = regexp.MustCompile(`^([0-9a-f]{32})-([A-Za-z0-9][A-Za-z0-9._+-]*)$`)
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)
	hashRE  = regexp.MustCompile(`^[0-9a-f]{32,}$`)
)

// Store is a content-addressed directory of read-only entries.
type Store struct {
	Root string
	// Substituters are asked, in order, for a derivation Realise does not
	// find in the store, before it builds (a binary cache plugs in here).
	Substituters []Substituter
}

// Entry is one complete store entry.
type Entry struct {
	Name string `json:"name"`
	Hash string `json:"hash"` // the 32 hex digits in the entry's directory name
	Path string `json:"path"`
}

// FileRecord is one file, directory or symlink of an entry.
type FileRecord struct {
	Path   string `json:"path"` // slash-separated, relative to the entry
	Type   string `json:"type"` // "file", "dir" or "symlink"
	Mode   string `json:"mode,omitempty"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Target string `json:"target,omitempty"`
}

// Manifest is what an entry holds about itself, in ManifestName.
type Manifest struct {
	Format int          `json:"format"`
	Name   string       `json:"name"`
	Hash   string       `json:"hash"` // the full hash the entry was added under
	Files  []FileRecord `json:"files"`
}

// Open opens (creating it if needed) the store at root; "" means
// $KILN_STORE, else ~/.cache/kiln/store.
func Open(root string) (*Store, error) {
	if root == "" {
		root = os.Getenv("KILN_STORE")
	}
	if root == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("store: no KILN_STORE and %w", err)
		}
		root = filepath.Join(cache, "kiln", "store")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return &Store{Root: abs}, nil
}

// Path is where the entry for (hash, name) lives: Root/<first 32 hex of hash>-<name>.
func (s *Store) Path(hash, name string) string {
	h := hash
	if len(h) > 32 {
		h = h[:32]
	}
	return filepath.Join(s.Root, h+"-"+name)
}

// Lookup reports whether the entry exists (and is complete: entries appear
// by an atomic rename).
func (s *Store) Lookup(hash, name string) (string, bool) {
	if checkKey(hash, name) != nil {
		return "", false
	}
	p := s.Path(hash, name)
	if _, err := os.Lstat(filepath.Join(p, ManifestName)); err != nil {
		return p, false
	}
	return p, true
}

func checkKey(hash, name string) error {
	if !hashRE.MatchString(hash) {
		return fmt.Errorf("store: hash %q is not at least 32 lower-case hex digits", hash)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("store: bad entry name %q", name)
	}
	return nil
}

// Add makes the entry (hash, name). If it exists, Add returns its path
// without calling fill. Otherwise fill writes the content into a temporary
// directory inside Root; then the entry's manifest (every file's path,
// mode, size, sha256 and every symlink's target) is written into it,
// everything is made read-only and the directory is renamed into place
// atomically. If fill fails, nothing is left behind. Concurrent Adds of the
// same entry are safe: the loser discards its work and returns the winner's.
func (s *Store) Add(hash, name string, fill func(dir string) error) (string, error) {
	if err := checkKey(hash, name); err != nil {
		return "", err
	}
	final := s.Path(hash, name)
	if p, ok := s.Lookup(hash, name); ok {
		return p, nil
	}
	tmp, err := os.MkdirTemp(s.Root, tmpPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			removeAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := fill(tmp); err != nil {
		return "", err
	}
	files, err := scan(tmp)
	if err != nil {
		return "", fmt.Errorf("store: add %s: %w", filepath.Base(final), err)
	}
	m := Manifest{Format: 1, Name: name, Hash: hash, Files: files}
	data, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ManifestName), append(data, '\n'), 0o444); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := makeReadOnly(tmp); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	// The entry's bytes reach the disk before its name does, so a power cut
	// never leaves a complete-looking entry with missing data.
	if err := syncFS(tmp); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE on this file system: rename(2) still refuses
		// to replace a non-empty directory.
		err = os.Rename(tmp, final)
	}
	if err != nil {
		if _, ok := s.Lookup(hash, name); ok {
			return final, nil // another Add won the race
		}
		return "", fmt.Errorf("store: add %s: %w", filepath.Base(final), err)
	}
	ok = true
	if err := syncFS(s.Root); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	return final, nil
}

// syncFS flushes the file system holding path: one call for a whole tree,
// where an fsync per file would cost a journal commit each.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// scan lists a tree for its manifest, hashing files in parallel.
func scan(root string) ([]FileRecord, error) {
	files, err := walk(root, false)
	if err != nil {
		return nil, err
	}
	if err := hashFiles(root, files); err != nil {
		return nil, err
	}
	return files, nil
}

// walk lists a tree's records, unhashed. For a manifest (verify false) it
// refuses a file named ManifestName and file types the store cannot hold,
// and records modes without write bits, as the store leaves them. For
// verify it leaves the manifest out, reports other file types by name and
// records modes as they are.
func walk(root string, verify bool) ([]FileRecord, error) {
	var files []FileRecord
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel == ManifestName {
			if verify {
				return nil
			}
			return fmt.Errorf("%s is reserved for the store", ManifestName)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := fi.Mode().Perm()
		if !verify {
			perm &^= 0o222
		}
		rec := FileRecord{Path: rel, Mode: fmt.Sprintf("%04o", perm)}
		switch {
		case fi.IsDir():
			rec.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			rec.Type, rec.Mode = "symlink", ""
			if rec.Target, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			rec.Type, rec.Size = "file", fi.Size()
		case verify:
			rec.Type = fi.Mode().Type().String()
		default:
			return fmt.Errorf("%s: %s files cannot enter the store", rel, fi.Mode().Type())
		}
		files = append(files, rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}

// hashFiles fills SHA256 of every "file" record, two at a time.
func hashFiles(root string, files []FileRecord) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	work := make(chan int)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				sum, err := HashFile(filepath.Join(root, filepath.FromSlash(files[i].Path)))
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				files[i].SHA256 = sum
			}
		}()
	}
	for i := range files {
		if files[i].Type == "file" {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	return first
}

// HashFile returns the hex sha256 of a file's content.
func HashFile(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// makeReadOnly removes every write bit (and set-id bits) in a tree.
func makeReadOnly(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return os.Chmod(p, fi.Mode().Perm()&^0o222)
	})
}

// removeAll deletes a tree whose directories may be read-only.
func removeAll(root string) error {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	return os.RemoveAll(root)
}

// ReadManifest reads an entry's manifest.
func ReadManifest(path string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(path, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w: no manifest: %v", filepath.Base(path), ErrTampered, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("store: %s: %w: manifest: %v", filepath.Base(path), ErrTampered, err)
	}
	return &m, nil
}

// Verify re-hashes everything in the entry at path and compares it with the
// entry's manifest. A changed, removed or added file, a changed mode or
// symlink target is an error wrapping ErrTampered that names the entry and
// the first bad file (in path order).
func (s *Store) Verify(path string) error {
	base := filepath.Base(path)
	m, err := ReadManifest(path)
	if err != nil {
		return err
	}
	if mm := entryRE.FindStringSubmatch(base); mm == nil || mm[2] != m.Name || !strings.HasPrefix(m.Hash, mm[1]) {
		return fmt.Errorf("store: %s: %w: manifest is for %s-%s", base, ErrTampered, m.Hash, m.Name)
	}
	have, err := scanForVerify(path)
	if err != nil {
		return fmt.Errorf("store: %s: %w: %v", base, ErrTampered, err)
	}
	want := map[string]FileRecord{}
	for _, f := range m.Files {
		want[f.Path] = f
	}
	got := map[string]FileRecord{}
	for _, f := range have {
		got[f.Path] = f
	}
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		w, inW := want[p]
		g, inG := got[p]
		var why string
		switch {
		case !inG:
			why = "removed"
		case !inW:
			why = "added"
		case w.Type != g.Type:
			why = fmt.Sprintf("was a %s, is a %s", w.Type, g.Type)
		case w.Target != g.Target:
			why = fmt.Sprintf("symlink target %q, want %q", g.Target, w.Target)
		case w.Size != g.Size || w.SHA256 != g.SHA256:
			why = "content changed"
		case w.Mode != g.Mode && w.Type == "file":
			why = fmt.Sprintf("mode %s, want %s", g.Mode, w.Mode)
		default:
			continue
		}
		return fmt.Errorf("store: %s: %w: %s: %s", base, ErrTampered, p, why)
	}
	return nil
}

// scanForVerify is scan with the manifest itself left out and other file
// types reported rather than refused.
func scanForVerify(root string) ([]FileRecord, error) {
	files, err := walk(root, true)
	if err != nil {
		return nil, err
	}
	return files, hashFiles(root, files)
}

// List returns the store's complete entries, sorted by name then hash.
func (s *Store) List() ([]Entry, error) {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []Entry
	for _, e := range ents {
		m := entryRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		out = append(out, Entry{Name: m[2], Hash: m[1], Path: filepath.Join(s.Root, e.Name())})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Hash < out[j].Hash
	})
	return out, nil
}

// GC removes the temporary directories of Adds whose process is gone and
// every entry for which keep returns false. It returns the entries removed.
func (s *Store) GC(keep func(Entry) bool) ([]Entry, error) {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		pid, _, _ := strings.Cut(strings.TrimPrefix(e.Name(), tmpPrefix), "-")
		if n, err := strconv.Atoi(pid); err == nil && n != os.Getpid() && unix.Kill(n, 0) == unix.ESRCH {
			if err := removeAll(filepath.Join(s.Root, e.Name())); err != nil {
				return nil, fmt.Errorf("store: gc: %w", err)
			}
		}
	}
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	var removed []Entry
	for _, e := range list {
		if keep != nil && keep(e) {
			continue
		}
		// Rename first, so a half-removed entry is never mistaken for a complete one.
		doomed := filepath.Join(s.Root, tmpPrefix+strconv.Itoa(os.Getpid())+"-gc-"+filepath.Base(e.Path))
		if err := os.Rename(e.Path, doomed); err != nil {
			return removed, fmt.Errorf("store: gc: %w", err)
		}
		if err := removeAll(doomed); err != nil {
			return removed, fmt.Errorf("store: gc: %w", err)
		}
		removed = append(removed, e)
	}
	return removed, nil
}

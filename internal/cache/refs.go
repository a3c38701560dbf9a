package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/store"
)

// RefDir is the directory, inside a store's root, of the references a
// running push holds on the entries it uploads: `kiln store gc` keeps an
// entry while a live process references it, so a push never loses the
// entry it is packing (its content would be uploaded half, and its record
// never).
const RefDir = ".kiln-cache-refs"

// Reference marks the entries at paths as in use by this process until the
// returned release is called.
func Reference(st *store.Store, paths []string) (release func(), err error) {
	dir := filepath.Join(st.Root, RefDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	var made []string
	release = func() {
		for _, m := range made {
			os.Remove(m)
		}
	}
	for _, p := range paths {
		ref := filepath.Join(dir, filepath.Base(p)+"@"+strconv.Itoa(os.Getpid()))
		if err := os.WriteFile(ref, nil, 0o644); err != nil {
			release()
			return nil, fmt.Errorf("cache: %w", err)
		}
		made = append(made, ref)
	}
	return release, nil
}

// Referenced returns the names of the entries a live process references
// (and removes references left by processes that are gone).
func Referenced(st *store.Store) map[string]bool {
	dir := filepath.Join(st.Root, RefDir)
	ents, _ := os.ReadDir(dir)
	out := map[string]bool{}
	for _, e := range ents {
		name, pid, ok := strings.Cut(e.Name(), "@")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil {
			continue
		}
		if n != os.Getpid() && unix.Kill(n, 0) == unix.ESRCH {
			os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		out[name] = true
	}
	return out
}

package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/internal/store"
)

// An entry is filled in a temporary directory, then appears whole and
// read-only; Verify notices any later change.
func ExampleStore_Add() {
	root, _ := os.MkdirTemp("", "kiln-store-example-")
	defer os.RemoveAll(root)
	s, _ := store.Open(root)
	hash := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	p, err := s.Add(hash, "greeting", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello\n"), 0o644)
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(filepath.Base(p))
	fi, _ := os.Stat(filepath.Join(p, "hello.txt"))
	fmt.Println(fi.Mode().Perm())
	fmt.Println(s.Verify(p))

	os.Chmod(filepath.Join(p, "hello.txt"), 0o644)
	os.WriteFile(filepath.Join(p, "hello.txt"), []byte("jello\n"), 0o644)
	err = s.Verify(p)
	fmt.Println(errors.Is(err, store.ErrTampered))
	fmt.Println(err)
	// Output:
	// 9f86d081884c7d659a2feaa0c55ad015-greeting
	// -r--r--r--
	// <nil>
	// true
	// store: 9f86d081884c7d659a2feaa0c55ad015-greeting: store entry tampered: hello.txt: content changed
}

package arduino_test

import (
	"errors"
	"os"
	"path/filepath"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// hasMain reports whether dir is a sketch: it holds <dirname>.ino or .pde.
func hasMain(dir string) bool {
	for _, ext := range []string{".ino", ".pde"} {
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(dir)+ext)); err == nil {
			return true
		}
	}
	return false
}

// makeWritable lets the test clean up a store (entries are read-only).
func makeWritable(dir string) {
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

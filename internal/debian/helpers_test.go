package debian_test

import (
	"testing"

	"kiln.dev/kiln/internal/store"
)

func sha256File(t *testing.T, name string) string {
	t.Helper()
	s, err := store.HashFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

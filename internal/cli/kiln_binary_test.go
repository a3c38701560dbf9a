package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/internal/trust"
)

// kilnBin is the kiln binary TestMain builds, for tests that run the real
// command (kiln emulate on a pty, driven by avrdude).
var kilnBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kilnBin = filepath.Join(dir, "kiln")
	// Flashes in tests go to a throwaway audit log, not the user's.
	if os.Getenv("KILN_LOG") == "" {
		os.Setenv("KILN_LOG", filepath.Join(dir, "audit.jsonl"))
	}
	// Checkpoints are signed with the operator's kiln key: tests sign
	// with a throwaway one, never the user's.
	if os.Getenv("KILN_LOG_KEY") == "" {
		k, _ := trust.GenerateKey(nil)
		kp := filepath.Join(dir, "log.key")
		os.WriteFile(kp, k.Encode(), 0o600)
		os.WriteFile(filepath.Join(dir, "log.pub"), k.Public().Encode(), 0o644)
		os.Setenv("KILN_LOG_KEY", kp)
	}
	build := exec.Command("go", "build", "-o", kilnBin, "kiln.dev/kiln/cmd/kiln")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build kiln:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

package fleet

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

var helperDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-helper-")
	if err == nil {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "kiln-helper-"+runtime.GOARCH), "kiln.dev/kiln/cmd/kiln-helper")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Stderr.Write(out)
			os.Exit(1)
		}
		helperDir = dir
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

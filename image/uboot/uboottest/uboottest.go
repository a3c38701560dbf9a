// Package uboottest reads U-Boot environments with the real tools, for
// tests: what kiln writes must be what libubootenv's fw_printenv (the tool
// on a device) reads.
package uboottest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Printenv returns the variables the real fw_printenv reads from env, the
// bytes of a uboot.env file (its length is the environment's size). The
// test fails when fw_printenv is missing (make deps installs
// libubootenv-tool) or refuses the file.
func Printenv(tb testing.TB, env []byte) map[string]string {
	tb.Helper()
	if _, err := exec.LookPath("fw_printenv"); err != nil {
		tb.Fatalf("fw_printenv is not installed (make deps installs libubootenv-tool): %v", err)
	}
	dir := tb.TempDir()
	file, cfg := filepath.Join(dir, "uboot.env"), filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(file, env, 0o644); err != nil {
		tb.Fatal(err)
	}
	os.WriteFile(cfg, []byte(file+" 0x0 0x"+strconv.FormatInt(int64(len(env)), 16)+"\n"), 0o644)
	out, err := exec.Command("fw_printenv", "-c", cfg).CombinedOutput()
	if err != nil {
		tb.Fatalf("fw_printenv: %v\n%s", err, out)
	}
	vars := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

package uboot_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/image/uboot"
)

func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s is not installed (make deps installs %s): %v", tool, pkg, err)
	}
}

// TestEnvReadByFwPrintenv: what kiln writes, the real fw_printenv reads with
// the same values, and what the real fw_setenv writes, kiln reads.
func TestEnvReadByFwPrintenv(t *testing.T) {
	need(t, "fw_printenv", "libubootenv-tool")
	dir := t.TempDir()
	file := filepath.Join(dir, "uboot.env")
	cfg := filepath.Join(dir, "fw_env.config")
	os.WriteFile(cfg, []byte(file+" 0x0 0x4000\n"), 0o644)
	vars := map[string]string{"boot_slot": "b", "boot_fallback": "a", "upgrade_available": "1", "bootcount": "0",
		"bootlimit": "3", "bootcmd": "load mmc 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}", "empty": ""}
	env, err := uboot.EncodeEnv(vars, uboot.EnvSize)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(file, env, 0o644)
	out, err := exec.Command("fw_printenv", "-c", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("fw_printenv: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		got[k] = v
	}
	for k, v := range vars {
		if v == "" {
			continue // fw_printenv may leave out empty variables
		}
		if got[k] != v {
			t.Errorf("fw_printenv: %s=%q, kiln wrote %q", k, got[k], v)
		}
	}
	// fw_setenv changes it; kiln reads the result.
	if out, err := exec.Command("fw_setenv", "-c", cfg, "upgrade_available", "0").CombinedOutput(); err != nil {
		t.Fatalf("fw_setenv: %v\n%s", err, out)
	}
	if out, err := exec.Command("fw_setenv", "-c", cfg, "bootcount", "0").CombinedOutput(); err != nil {
		t.Fatalf("fw_setenv: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(file)
	back, err := uboot.DecodeEnv(b)
	if err != nil {
		t.Fatal(err)
	}
	if back["upgrade_available"] != "0" || back["boot_slot"] != "b" || back["bootcmd"] != vars["bootcmd"] {
		t.Errorf("after fw_setenv: %v", back)
	}
	// libubootenv writes the list sorted and zero-padded, as U-Boot does:
	// kiln's encoding of what it read is the very file fw_setenv left.
	again, _ := uboot.EncodeEnv(back, uboot.EnvSize)
	if !bytes.Equal(again, b) {
		t.Errorf("kiln's encoding differs from fw_setenv's file:\n%q\n%q", again[:200], b[:200])
	}
}

func TestEnvBadInputs(t *testing.T) {
	env, _ := uboot.EncodeEnv(map[string]string{"a": "1"}, 64)
	env[10] ^= 1
	if _, err := uboot.DecodeEnv(env); !errors.Is(err, uboot.ErrBadCRC) {
		t.Errorf("corrupt: %v", err)
	}
	for _, vars := range []map[string]string{{"a=b": "1"}, {"": "x"}, {"a": "x\x00y"}, {"a": strings.Repeat("x", 100)}} {
		if _, err := uboot.EncodeEnv(vars, 64); !errors.Is(err, uboot.ErrBadEnv) {
			t.Errorf("%q: %v", vars, err)
		}
	}
}

func FuzzDecodeEnv(f *testing.F) {
	env, _ := uboot.EncodeEnv(map[string]string{"a": "1", "bootcmd": "run x"}, 256)
	f.Add(env)
	f.Fuzz(func(t *testing.T, b []byte) {
		vars, err := uboot.DecodeEnv(b)
		if err != nil {
			return
		}
		re, err := uboot.EncodeEnv(vars, len(b))
		if err != nil {
			return // an entry with a second '=' in a name cannot come back
		}
		if again, err := uboot.DecodeEnv(re); err != nil || len(again) != len(vars) {
			t.Fatalf("round trip: %v %v", again, err)
		}
	})
}

// TestScriptMatchesMkimage: kiln's boot.scr is byte-identical to
// mkimage's with the same SOURCE_DATE_EPOCH, and ScriptText reads both.
func TestScriptMatchesMkimage(t *testing.T) {
	need(t, "mkimage", "u-boot-tools")
	dir := t.TempDir()
	text := []byte("echo kiln\nsetenv x 1\n") // odd length: no padding either way
	os.WriteFile(filepath.Join(dir, "boot.cmd"), text, 0o644)
	cmd := exec.Command("mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "kiln boot script",
		"-d", filepath.Join(dir, "boot.cmd"), filepath.Join(dir, "boot.scr"))
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1751414400")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, out)
	}
	want, _ := os.ReadFile(filepath.Join(dir, "boot.scr"))
	got, err := uboot.Script(text, "kiln boot script", 1751414400)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("kiln's script image differs from mkimage's:\n%x\n%x", got[:80], want[:80])
	}
	if back, err := uboot.ScriptText(want); err != nil || !bytes.Equal(back, text) {
		t.Errorf("ScriptText = %q, %v", back, err)
	}
	got[70] ^= 1
	if _, err := uboot.ScriptText(got); err == nil {
		t.Error("a corrupted script image was read")
	}
}

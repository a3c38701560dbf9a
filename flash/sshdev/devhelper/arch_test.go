package devhelper

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The helpers kiln uploads to Raspberry Pis are cross-compiled; run each
// under QEMU's user-mode emulation on the CPU of the oldest Pi it serves
// (arm1176 for the Pi Zero and Pi 1, cortex-a53 for the Pi 3) and check it
// says and writes exactly what the native helper does.
func TestCrossBuiltHelpersAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the helper")
	}
	const bs = 4096
	rng := rand.New(rand.NewSource(3))
	old := make([]byte, 17<<20)
	rng.Read(old)
	next := bytes.Clone(old)
	var changed []int
	for i := 0; i < len(old)/bs; i += 1 + rng.Intn(300) {
		changed = append(changed, i)
		next[i*bs+rng.Intn(bs)] ^= 0x5a
	}
	var in bytes.Buffer
	for o := 0; o < len(next); o += bs {
		in.Write(binary.BigEndian.AppendUint64(nil, BlockSum(next[o:o+bs])))
	}
	for _, i := range changed {
		in.Write(next[i*bs : (i+1)*bs])
	}
	dir := t.TempDir()
	native := filepath.Join(dir, "native")
	os.WriteFile(native, old, 0o600)
	var want bytes.Buffer
	if err := Main([]string{"delta", native, fmt.Sprint(len(old)), fmt.Sprint(bs)}, bytes.NewReader(in.Bytes()), &want); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ goarch, goarm, qemu, cpu string }{
		{"arm64", "", "qemu-aarch64-static", "cortex-a53"},
		{"arm", "6", "qemu-arm-static", "arm1176"},
	} {
		t.Run(tc.goarch, func(t *testing.T) {
			if _, err := exec.LookPath(tc.qemu); err != nil {
				t.Skipf("%s not installed (make deps installs qemu-user-static)", tc.qemu)
			}
			bin := filepath.Join(dir, "kiln-helper-"+tc.goarch)
			build := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", bin, "kiln.dev/kiln/cmd/kiln-helper")
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+tc.goarch, "GOARM="+tc.goarm)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("build: %v\n%s", err, out)
			}
			disk := filepath.Join(dir, "disk-"+tc.goarch)
			os.WriteFile(disk, old, 0o600)
			cmd := exec.Command(tc.qemu, "-cpu", tc.cpu, bin, "delta", disk, fmt.Sprint(len(old)), fmt.Sprint(bs))
			cmd.Stdin = bytes.NewReader(in.Bytes())
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %s", err, stderr.String())
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("%s helper said\n%s\nthe native one\n%s", tc.goarch, got, want.String())
			}
			if data, _ := os.ReadFile(disk); !bytes.Equal(data, next) {
				t.Fatalf("%s helper left the wrong bytes", tc.goarch)
			}
		})
	}
}

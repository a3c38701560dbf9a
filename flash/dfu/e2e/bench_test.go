package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu/dfutest"
)

// BenchmarkFlashVsDfuUtil writes a 256 KiB image to the NUCLEO-F401RE model
// (STM32F401 datasheet erase and program times, wall clock) and proves it,
// once with kiln flash --port dfu: and once with dfu-util 0.11 (-D, then -U
// to read it back, since dfu-util has no verify), both through the same
// libusb stand-in, and prints the ratio.
func BenchmarkFlashVsDfuUtil(b *testing.B) {
	if _, err := exec.LookPath("dfu-util"); err != nil {
		b.Fatal("dfu-util is missing: the Makefile installs it (make deps)")
	}
	board, _ := boards.Get("nucleo-f401re")
	dir := b.TempDir()
	so, err := dfutest.BuildShim(dir)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 256<<10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.UintN(256))
	}
	bin := filepath.Join(dir, "fw.bin")
	os.WriteFile(bin, data, 0o644)
	img, _ := flash.NewImage("fw", flash.Segment{Addr: 0x08000000, Data: data})

	session := func(run func(env []string)) time.Duration {
		dev, err := dfutest.ForBoard(board)
		if err != nil {
			b.Fatal(err)
		}
		dev.SetTiming(dfutest.F401)
		sock := filepath.Join(dir, "usb.sock")
		os.Remove(sock)
		stop, err := dev.ListenUSB(sock)
		if err != nil {
			b.Fatal(err)
		}
		defer stop()
		start := time.Now()
		run(append(os.Environ(), "LD_PRELOAD="+so, "KILN_USB_SHIM="+sock))
		el := time.Since(start)
		if got, _ := dev.Memory(0x08000000, len(data)); !bytes.Equal(got, data) {
			b.Fatal("the device does not hold the image")
		}
		return el
	}
	for i := 0; i < b.N; i++ {
		kiln := session(func(env []string) {
			a, _ := json.Marshal([]string{"flash", "--board", "nucleo-f401re", "--port", "dfu:", bin, "--address", "0x08000000"})
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(env, "KILN_E2E_ARGS="+string(a))
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "verified: sha256 "+img.SHA256()) {
				b.Fatalf("kiln flash: %v\n%s", err, out)
			}
		})
		peer := session(func(env []string) {
			up := filepath.Join(dir, "up.bin")
			os.Remove(up)
			for _, args := range [][]string{
				{"-a", "0", "-s", "0x08000000", "-D", bin},
				{"-a", "0", "-s", "0x08000000:0x40000", "-U", up},
			} {
				cmd := exec.Command("dfu-util", args...)
				cmd.Env = env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("dfu-util %v: %v\n%s", args, err, out)
				}
			}
			got, _ := os.ReadFile(up)
			if sha256.Sum256(got) != sha256.Sum256(data) {
				b.Fatal("dfu-util read back other bytes")
			}
		})
		ratio := float64(kiln) / float64(peer)
		b.Logf("write+verify 256 KiB on the F401 model through libusb: kiln %v, dfu-util -D + -U %v: kiln/dfu-util = %.3f",
			kiln.Round(time.Millisecond), peer.Round(time.Millisecond), ratio)
		b.ReportMetric(ratio, "kiln/dfu-util")
	}
}

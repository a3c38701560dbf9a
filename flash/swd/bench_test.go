package swd_test

import (
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"kiln.dev/kiln/flash/internal/usbshim"
	"kiln.dev/kiln/flash/swd/swdtest"
)

// BenchmarkWriteVerifyVsOpenOCD writes and verifies a 256 KiB image to the
// F401 model with datasheet erase and program times (TimeScale 1), once
// with kiln and once with OpenOCD 0.12, both through the libusb stand-in,
// and reports each against the model's theoretical minimum (the sum of the
// datasheet times of the erases and programs the image needs).
func BenchmarkWriteVerifyVsOpenOCD(b *testing.B) {
	if _, err := exec.LookPath("openocd"); err != nil {
		b.Skip("openocd is not installed")
	}
	dir := b.TempDir()
	so, err := usbshim.Build(dir)
	if err != nil {
		b.Fatal(err)
	}
	img := make([]byte, 256<<10)
	rand.New(rand.NewSource(1)).Read(img)
	bin := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(bin, img, 0o644); err != nil {
		b.Fatal(err)
	}
	board := board(&testing.T{}, "nucleo-f401re")
	run := func(name string, args []string, env ...string) time.Duration {
		chip, err := swdtest.NewChip(board)
		if err != nil {
			b.Fatal(err)
		}
		chip.TimeScale = 1
		sock := filepath.Join(dir, name+".sock")
		probe := swdtest.NewProbe(chip, "BENCH")
		probe.PacketSize = 512 // a high-speed probe, for both
		stop, err := usbshim.Listen(sock, &swdtest.USB{Probe: probe})
		if err != nil {
			b.Fatal(err)
		}
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), append(usbshim.Env(so, sock), env...)...)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		d := time.Since(start)
		if string(chip.Page(0x08000000, len(img))) != string(img) {
			b.Fatalf("%s: the model does not hold the image", name)
		}
		return d
	}
	// The datasheet minimum: sectors 0-5 (4 x 16 KiB at 400 ms, 64 KiB at
	// 1.2 s, 128 KiB at 2 s) and 65536 word programs at 16 us.
	minimum := 4*400*time.Millisecond + 1200*time.Millisecond + 2000*time.Millisecond + 65536*16*time.Microsecond
	for i := 0; i < b.N; i++ {
		k := run("kiln", []string{os.Args[0], "-test.run=^$"}, "KILN_SWD_CHILD=nucleo-f401re", "KILN_SWD_PORT=swd:", "KILN_SWD_BIN="+bin)
		o := run("openocd", []string{"openocd", "-f", "interface/cmsis-dap.cfg", "-c", "cmsis_dap_backend usb_bulk", "-c", "transport select swd",
			"-c", "set WORKAREASIZE 0", "-f", "target/stm32f4x.cfg", "-c", "program image.bin 0x08000000 verify reset exit"})
		b.ReportMetric(k.Seconds(), "kiln-s")
		b.ReportMetric(o.Seconds(), "openocd-s")
		b.ReportMetric(minimum.Seconds(), "minimum-s")
		b.ReportMetric(k.Seconds()/o.Seconds(), "kiln/openocd")
		b.ReportMetric(k.Seconds()/minimum.Seconds(), "kiln/minimum")
	}
}

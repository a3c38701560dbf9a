package cli

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkFlashVsAvrdudeOnPacedEmulator writes and verifies the same
// 32256-byte image with kiln and with avrdude 7.1 (-c arduino) through
// `kiln emulate arduino-uno --pace`, whose UART runs at 115200 baud of wall
// time in both directions and each page takes 9 ms to program. (The same comparison against the real Optiboot
// in simavr lives with the simavr harness.)
func BenchmarkFlashVsAvrdudeOnPacedEmulator(b *testing.B) {
	if _, err := exec.LookPath("avrdude"); err != nil {
		b.Fatalf("avrdude is not installed (make deps installs it): %v", err)
	}
	dir := b.TempDir()
	img := randomBytes(32256, 32256)
	hex := writeHex(b, dir, "img.hex", 0, img)
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(kilnBin, "emulate", "arduino-uno", "--pace", "--state", filepath.Join(dir, "state"))
		emu := startEmulateCmd(b, cmd)
		start := time.Now()
		if out, err := exec.Command(kilnBin, "flash", "--board", "arduino-uno", "--port", emu, hex).CombinedOutput(); err != nil {
			b.Fatalf("kiln flash: %v\n%s", err, out)
		}
		kiln := time.Since(start)
		start = time.Now()
		if out, err := exec.Command("avrdude", "-c", "arduino", "-p", "m328p", "-P", emu, "-b", "115200", "-U", "flash:w:"+hex+":i").CombinedOutput(); err != nil {
			b.Fatalf("avrdude: %v\n%s", err, out)
		}
		avrdude := time.Since(start)
		// The limit: the image once each way at 10 bits a byte, plus the
		// emulated chip's 9 ms erase+write of each of the 252 pages.
		wire := time.Duration(2*len(img)) * 10 * time.Second / 115200
		limit := wire + 252*9*time.Millisecond
		b.Logf("write+verify of 32256 bytes at 115200 baud (paced emulator): kiln %.2fs, avrdude %.2fs: kiln/avrdude = %.2f; wire alone %.2fs, wire + page programming %.2fs: kiln/limit = %.2f",
			kiln.Seconds(), avrdude.Seconds(), kiln.Seconds()/avrdude.Seconds(), wire.Seconds(), limit.Seconds(), kiln.Seconds()/limit.Seconds())
		b.ReportMetric(kiln.Seconds()/avrdude.Seconds(), "kiln/avrdude")
		b.ReportMetric(kiln.Seconds()/limit.Seconds(), "kiln/limit")
		b.ReportMetric(kiln.Seconds(), "kiln-s")
		b.ReportMetric(avrdude.Seconds(), "avrdude-s")
	}
}

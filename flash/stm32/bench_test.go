package stm32_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"kiln.dev/kiln/flash/stm32/stm32test"
)

// wireLimit is the least time the AN3155 exchange for writing and reading
// back size bytes in 256-byte blocks takes on a UART at baud (10 bits a
// byte, half duplex: the host waits for each answer), and the device's own
// erase and program time on top of it for an STM32F1 (20 ms a 1 KiB page,
// 52.5 µs a half-word).
func wireLimit(size, baud int) (wire, device time.Duration) {
	blocks := (size + 255) / 256
	// Write: cmd 2 + ACK, address 5 + ACK, N 1 + data + checksum 1 + ACK.
	// Read: cmd 2 + ACK, address 5 + ACK, N 2 + ACK + data.
	perBlock := (2 + 1 + 5 + 1 + 1 + 256 + 1 + 1) + (2 + 1 + 5 + 1 + 2 + 1 + 256)
	pages := (size + 1023) / 1024
	erase := 2 + 1 + 1 + pages + 1 + 1
	bytes := blocks*perBlock + erase + 1 + 1 // and the 0x7F sync
	wire = time.Duration(float64(bytes) * 10 / float64(baud) * float64(time.Second))
	device = time.Duration(pages)*20*time.Millisecond + time.Duration(size/2)*52500*time.Nanosecond
	return wire, device
}

// BenchmarkWriteVerify64K: kiln and stm32flash each write and verify the
// same 64 KiB image to a Blue Pill emulator paced like the real board at
// 115200 baud (UART byte times, page erase and half-word program times),
// on a pseudo-terminal, in the same run.
func BenchmarkWriteVerify64K(b *testing.B) {
	const size, baud = 64 << 10, 115200
	stm32flash := needStm32flash(b)
	kiln := kilnBinary(b)
	dir := b.TempDir()
	image := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(image, randBytes(rand.New(rand.NewSource(64)), size), 0o644); err != nil {
		b.Fatal(err)
	}
	paced := func() (*stm32test.Device, string) {
		d := newDevice(b, "bluepill")
		d.Timing = stm32test.Paced(baud)
		return d, servePTY(b, d)
	}
	ctx := context.Background()
	var kilnT, peerT time.Duration
	for i := 0; i < b.N; i++ {
		_, port := paced()
		start := time.Now()
		out, err := exec.CommandContext(ctx, kiln, "flash", "--board", "bluepill", "--port", port,
			"--address", "0x08000000", "--log", "off", image).CombinedOutput()
		if err != nil {
			b.Fatalf("kiln flash: %v\n%s", err, out)
		}
		kilnT += time.Since(start)

		_, port = paced()
		start = time.Now()
		out, err = stm32flashWrite(ctx, stm32flash, port, image)
		if err != nil {
			b.Fatalf("stm32flash: %v\n%s", err, lastLines(out, 10))
		}
		peerT += time.Since(start)
	}
	kilnT /= time.Duration(b.N)
	peerT /= time.Duration(b.N)
	wire, dev := wireLimit(size, baud)
	floor := wire + dev
	ratio := kilnT.Seconds() / peerT.Seconds()
	fmt.Printf("stm32 64 KiB write+verify at %d baud: kiln %.2fs, stm32flash %.2fs, kiln/stm32flash %.3f; "+
		"wire-rate limit %.2fs (+ device erase/program %.2fs = %.2fs): kiln/limit %.3f\n",
		baud, kilnT.Seconds(), peerT.Seconds(), ratio, wire.Seconds(), dev.Seconds(), floor.Seconds(), kilnT.Seconds()/floor.Seconds())
	b.ReportMetric(kilnT.Seconds(), "kiln-s")
	b.ReportMetric(peerT.Seconds(), "stm32flash-s")
	b.ReportMetric(ratio, "kiln/stm32flash")
	b.ReportMetric(floor.Seconds(), "limit-s")
}

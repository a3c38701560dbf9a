package station_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/station"
)

// BenchmarkStationVsAvrdude provisions 8 ports × 4 paced Unos with kiln
// station and, on the same kind of boards, writes and verifies the same
// bytes (firmware plus a record page) with eight avrdude processes at a
// time, as a line scripted around avrdude would. avrdude does no
// provisioning, trust check or logging: it is the bare wire-and-verify
// peer. Its time includes its own fixed reset waits (it pulses DTR and
// sleeps even on a port without modem lines) and each round waits for its
// slowest process; kiln's includes swapping boards between jobs.
func BenchmarkStationVsAvrdude(b *testing.B) {
	if _, err := exec.LookPath("avrdude"); err != nil {
		b.Fatalf("avrdude (Debian's) is not installed: %v", err)
	}
	const ports, perPort = 8, 4
	var kilnTime, peerTime time.Duration
	var kilnBoards, peerBoards int
	for i := 0; i < b.N; i++ {
		d, n := runLine(b, ports, perPort)
		kilnTime += d
		kilnBoards += n
		d, n = runAvrdude(b, ports, perPort)
		peerTime += d
		peerBoards += n
	}
	kiln := float64(kilnBoards) / kilnTime.Hours()
	peer := float64(peerBoards) / peerTime.Hours()
	b.ReportMetric(kiln, "kiln-boards/h")
	b.ReportMetric(peer, "avrdude-boards/h")
	b.ReportMetric(kiln/peer, "kiln/avrdude")
	fmt.Printf("station vs avrdude, %d ports × %d paced Unos: kiln station %.0f boards/hour, avrdude ×%d %.0f boards/hour: ratio %.2f\n",
		ports, perPort, kiln, ports, peer, kiln/peer)
}

// runAvrdude writes and verifies the same 4096 + 128 bytes as runLine with
// n avrdude processes in parallel, perPort rounds of fresh boards.
func runAvrdude(b *testing.B, n, perPort int) (time.Duration, int) {
	dir := b.TempDir()
	rec, err := (&station.Record{Serial: "KLN-000001", Time: time.Now()}).Encode(recordSize)
	if err != nil {
		b.Fatal(err)
	}
	img := make([]byte, recordAddr+recordSize)
	for i := range img {
		img[i] = 0xFF
	}
	copy(img, firmware(4096, 0x5a))
	copy(img[recordAddr:], rec)
	hex := filepath.Join(dir, "fw.hex")
	writeHex(b, hex, img, true)
	paced := fastUno()
	paced.Pace = true
	start := time.Now()
	for round := 0; round < perPort; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			bd := plugBoard(b, paced, "")
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				out, err := exec.CommandContext(ctx, "avrdude", "-c", "arduino", "-p", "m328p", "-P", bd.name, "-b", "115200",
					"-D", "-U", "flash:w:"+hex+":i").CombinedOutput()
				if err != nil || !strings.Contains(string(out), "bytes of flash verified") {
					errs <- fmt.Errorf("avrdude on %s: %v\n%s", bd.name, err, out)
				}
				bd.unplug()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	return time.Since(start), n * perPort
}

package simavr_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
)

// Line and flash facts of the simulated Uno the wire-rate limit is made of.
const (
	baud      = 115200
	bitsByte  = 10                   // 8N1: start, 8 data, stop
	pageSize  = 128                  // ATmega328P flash page
	spmTime   = 4 * time.Millisecond // page erase, page write (the harness's default)
	readChunk = 256                  // most one READ_PAGE returns from Optiboot on a 128-byte-page part
	// GET_SYNC, 2 GET_PARAMETER, ENTER_PROGMODE, READ_SIGN, LEAVE_PROGMODE: request + answer
	syncBytes  = (2 + 2) + 2*(3+3) + (2 + 2) + (2 + 5) + (2 + 2)
	benchImage = appSize
)

// minimumBytes is what any STK500v1 client must move to write and verify n
// bytes from address 0 through Optiboot: per page LOAD_ADDRESS (4 bytes,
// answer 2) and PROG_PAGE (4 + page + 1, answer 2); per 256-byte chunk
// LOAD_ADDRESS and READ_PAGE (5, answer 1 + chunk + 1); plus the session.
func minimumBytes(n int) int {
	pages := (n + pageSize - 1) / pageSize
	chunks := (n + readChunk - 1) / readChunk
	write := pages * (4 + 2 + 4 + pageSize + 1 + 2)
	read := chunks*(4+2+5+2) + n
	return write + read + syncBytes
}

// BenchmarkOptibootWriteVerify writes and verifies the same 32256-byte image
// to the real Optiboot v8.3 in simavr with avrdude 7.1 (-c arduino) and with
// kiln (the kiln command), each against a fresh simulation, and compares
// their wall times with each other and with the limit the line and the
// flash set.
func BenchmarkOptibootWriteVerify(b *testing.B) {
	if _, err := exec.LookPath("avrdude"); err != nil {
		b.Fatalf("avrdude is not installed (make deps installs it): %v", err)
	}
	kiln(b)
	r := rand.New(rand.NewPCG(3, 8))
	data := make([]byte, benchImage)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	path := filepath.Join(b.TempDir(), "bench.hex")
	if err := os.WriteFile(path, intelHex(data), 0o644); err != nil {
		b.Fatal(err)
	}
	img, err := flash.Load(path, flash.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}

	minBytes := minimumBytes(len(data))
	wire := byteTime(minBytes)
	pages := (len(data) + pageSize - 1) / pageSize
	flashTime := time.Duration(pages) * 2 * spmTime // Optiboot 8.3 erases, then writes, each page
	limit := wire + flashTime

	b.ResetTimer()
	for range b.N {
		ad := runTool(b, img, func(port string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, "avrdude", "-c", "arduino", "-b", strconv.Itoa(baud), "-P", port,
				"-p", "m328p", "-U", "flash:w:"+path+":i").CombinedOutput()
			if err == nil && !bytes.Contains(out, []byte(fmt.Sprintf("%d bytes of flash verified", len(data)))) {
				err = fmt.Errorf("no verified write reported")
			}
			if err != nil {
				return "", fmt.Errorf("avrdude: %v\n%s", err, out)
			}
			return avrdudePhases(out), nil
		})
		b.Logf("avrdude 7.1 -c arduino: %.2f s (%s), %d bytes on the line (%.2f s at %d baud), sim behind real time %d times",
			ad.wall.Seconds(), ad.detail, ad.bytes, byteTime(ad.bytes).Seconds(), baud, ad.behind)

		kl := runTool(b, img, func(port string) (string, error) {
			rep := kilnFlash(b, port, path)
			if rep.DeviceSHA256 != img.SHA256() || !rep.Verified {
				return "", fmt.Errorf("kiln: device hash %s, verified %v; want %s", rep.DeviceSHA256, rep.Verified, img.SHA256())
			}
			return fmt.Sprintf("write %.2f s, verify %.2f s", rep.WriteSec, rep.VerifySec), nil
		})
		b.Logf("kiln flash:             %.2f s (%s), %d bytes on the line (%.2f s at %d baud), sim behind real time %d times",
			kl.wall.Seconds(), kl.detail, kl.bytes, byteTime(kl.bytes).Seconds(), baud, kl.behind)

		ratio := kl.wall.Seconds() / ad.wall.Seconds()
		b.Logf("kiln/avrdude = %.3f (target <= 0.85)", ratio)
		b.Logf("limit: %d bytes any STK500v1 client must move = %.2f s at %d baud (%d bits/byte), + %d pages x 2 x %v flash programming = %.2f s",
			minBytes, wire.Seconds(), baud, bitsByte, pages, spmTime, limit.Seconds())
		b.Logf("kiln/limit = %.3f, avrdude/limit = %.3f; kiln/wire-only = %.3f (the wire alone, without flash programming time)",
			kl.wall.Seconds()/limit.Seconds(), ad.wall.Seconds()/limit.Seconds(), kl.wall.Seconds()/wire.Seconds())
		b.ReportMetric(kl.wall.Seconds(), "kiln-s")
		b.ReportMetric(ad.wall.Seconds(), "avrdude-s")
		b.ReportMetric(ratio, "kiln/avrdude")
		b.ReportMetric(limit.Seconds(), "limit-s")
		b.ReportMetric(kl.wall.Seconds()/limit.Seconds(), "kiln/limit")
		b.ReportMetric(kl.wall.Seconds()/wire.Seconds(), "kiln/wire")
	}
}

func byteTime(n int) time.Duration {
	return time.Duration(n) * bitsByte * time.Second / baud
}

type toolRun struct {
	wall   time.Duration
	detail string
	bytes  int
	behind int64
}

// runTool starts a fresh simulation, times run against its port, and proves
// the flash holds img afterwards.
func runTool(b *testing.B, img *flash.Image, run func(port string) (string, error)) toolRun {
	b.Helper()
	sim := start(b)
	t0 := time.Now()
	detail, err := run(sim.Port)
	wall := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	checkFlash(b, sim, img)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sim.Stats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if st.Overruns != 0 {
		b.Fatalf("%d bytes overran the MCU's receiver", st.Overruns)
	}
	return toolRun{wall: wall, detail: detail, bytes: int(st.RX + st.TX), behind: st.Behind}
}

var avrdudeTimes = regexp.MustCompile(`(Writing|Reading) \| #+ \| 100% ([0-9.]+)s`)

// avrdudePhases picks avrdude's own write and read times from its output.
func avrdudePhases(out []byte) string {
	s := ""
	for _, m := range avrdudeTimes.FindAllSubmatch(out, -1) {
		if s != "" {
			s += ", "
		}
		what := "write"
		if string(m[1]) == "Reading" {
			what = "verify"
		}
		s += what + " " + string(m[2]) + " s"
	}
	return s
}

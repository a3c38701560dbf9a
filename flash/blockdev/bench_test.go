package blockdev

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkWriters writes one 64 MiB image laid out like an SD-card image
// (a partition table, then file systems: 37 MiB of extents, the rest holes) to one
// loop device with kiln (bmap, O_DIRECT, read-back proven), with `bmaptool
// copy` (bmap, checks only the source's checksums) and with dd followed by
// a sha256sum read-back of the device, and reports each one's seconds and
// kiln's ratio to the others. Each iteration runs the three five times,
// interleaved, the page cache dropped before each (the machine is noisy:
// the ratio is of sums within one run).
func BenchmarkWriters(b *testing.B) {
	for _, tool := range []string{"bmaptool", "dd", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s is not installed (make deps installs bmap-tools and coreutils): %v", tool, err)
		}
	}
	const size = 64 << 20
	dir := b.TempDir()
	const mib = 256 // 4 KiB blocks
	img, _, bm := testImageMapped(b, dir, size, func(i int) bool {
		return i < mib || (i >= 4*mib && i < 20*mib) || (i >= 32*mib && i < 40*mib) || (i >= 48*mib && i < 60*mib)
	})
	dev, _ := loopDevice(b, size)
	bmapFile := filepath.Join(dir, "image.bmap")
	sh := func(script string) {
		if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	timeIt := func(f func()) float64 {
		exec.Command("sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches").Run()
		start := time.Now()
		f()
		return time.Since(start).Seconds()
	}
	const rounds = 5
	var kiln, bmaptool, dd float64
	for i := 0; i < b.N*rounds; i++ {
		kiln += timeIt(func() {
			if _, err := Write(context.Background(), dev, img, Options{Bmap: bm, Force: true}); err != nil {
				b.Fatal(err)
			}
		})
		bmaptool += timeIt(func() { sh(fmt.Sprintf("bmaptool -q copy --bmap %s %s %s", bmapFile, img, dev)) })
		dd += timeIt(func() {
			sh(fmt.Sprintf("dd if=%s of=%s bs=4M oflag=direct conv=fsync status=none && dd if=%s bs=4M iflag=direct count=%d status=none | sha256sum >/dev/null", img, dev, dev, size/(4<<20)))
		})
	}
	n := float64(b.N * rounds)
	b.ReportMetric(kiln/n, "kiln-s")
	b.ReportMetric(bmaptool/n, "bmaptool-s")
	b.ReportMetric(dd/n, "dd+sha256sum-s")
	b.ReportMetric(kiln/bmaptool, "kiln/bmaptool")
	b.ReportMetric(kiln/dd, "kiln/dd+sha256sum")
	b.Log(strings.TrimSpace(fmt.Sprintf("kiln %.2fs (write+proof), bmaptool copy %.2fs (no read-back), dd+sha256sum %.2fs", kiln/n, bmaptool/n, dd/n)))
}

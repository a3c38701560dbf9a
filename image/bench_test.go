package image

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
)

// benchPayload is compressible data with no zero blocks (so kiln's zero-block
// cache plays no part): pseudo-random words from a small vocabulary, with a
// stretch of random bytes every few MiB, like a mix of text and binaries.
func benchPayload(n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{7}))
	words := strings.Fields("kiln image block stream partition squashfs ext4 fat32 kernel initramfs device tree slot boot root data update flash verify hash sha256 derivation recipe store fetch")
	var b bytes.Buffer
	for b.Len() < n {
		if b.Len()%(4<<20) < 64 {
			junk := make([]byte, 256<<10)
			rand.NewChaCha8([32]byte{byte(b.Len() >> 20)}).Read(junk)
			b.Write(junk)
		}
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(" \n"[r.IntN(2)])
	}
	return b.Bytes()[:n]
}

// BenchmarkXZCompress: kiln's parallel blocks vs single-stream ulikunitz/xz
// vs xz -T0 on the same 32 MiB. kiln and single-stream run interleaved, twice
// each, and the faster run of each counts (the machine is shared).
func BenchmarkXZCompress(b *testing.B) {
	data := benchPayload(32 << 20)
	mbps := func(d time.Duration) float64 { return float64(len(data)) / d.Seconds() / 1e6 }
	for i := 0; i < b.N; i++ {
		var par, single bytes.Buffer
		dPar, dSingle := time.Duration(1<<62), time.Duration(1<<62)
		for round := 0; round < 2; round++ {
			par.Reset()
			t0 := time.Now()
			if err := CompressXZ(context.Background(), &par, bytes.NewReader(data), XZOptions{}); err != nil {
				b.Fatal(err)
			}
			dPar = min(dPar, time.Since(t0))

			single.Reset()
			t0 = time.Now()
			w, err := xz.NewWriter(&single)
			if err != nil {
				b.Fatal(err)
			}
			w.Write(data)
			w.Close()
			dSingle = min(dSingle, time.Since(t0))
		}

		t0 := time.Now()
		cmd := exec.Command("xz", "-T0", "-c")
		cmd.Stdin = bytes.NewReader(data)
		var xzOut bytes.Buffer
		cmd.Stdout = &xzOut
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		dXZ := time.Since(t0)

		ratio := dSingle.Seconds() / dPar.Seconds()
		b.Logf("xz compress 32 MiB on %d cores: kiln parallel %.1f MB/s (%.1f%% size), ulikunitz single-stream %.1f MB/s (%.1f%%), xz -T0 %.1f MB/s (%.1f%%); kiln/single-stream = %.2fx",
			runtime.GOMAXPROCS(0), mbps(dPar), 100*float64(par.Len())/float64(len(data)),
			mbps(dSingle), 100*float64(single.Len())/float64(len(data)),
			mbps(dXZ), 100*float64(xzOut.Len())/float64(len(data)), ratio)
		b.ReportMetric(ratio, "x-vs-single-stream")
		b.ReportMetric(mbps(dPar), "kiln-MB/s")
		b.ReportMetric(mbps(dXZ), "xz-T0-MB/s")
	}
}

// BenchmarkXZDecompress: kiln's streaming parallel reader vs xz -dc on the
// same .xz (kiln's output).
func BenchmarkXZDecompress(b *testing.B) {
	data := benchPayload(48 << 20)
	var comp bytes.Buffer
	if err := CompressXZ(context.Background(), &comp, bytes.NewReader(data), XZOptions{}); err != nil {
		b.Fatal(err)
	}
	f := filepath.Join(b.TempDir(), "x.xz")
	os.WriteFile(f, comp.Bytes(), 0o644)
	mbps := func(d time.Duration) float64 { return float64(len(data)) / d.Seconds() / 1e6 }
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r := NewXZReader(bytes.NewReader(comp.Bytes()), 0)
		n, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatalf("kiln reader: %d bytes, %v", n, err)
		}
		dKiln := time.Since(t0)
		t0 = time.Now()
		cmd := exec.Command("xz", "-dc", f)
		cmd.Stdout = io.Discard
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		dXZ := time.Since(t0)
		b.Logf("xz decompress 48 MiB: kiln streaming parallel reader %.1f MB/s, xz -dc %.1f MB/s; kiln/xz = %.2fx",
			mbps(dKiln), mbps(dXZ), dXZ.Seconds()/dKiln.Seconds())
		b.ReportMetric(mbps(dKiln), "kiln-MB/s")
		b.ReportMetric(mbps(dXZ), "xz-dc-MB/s")
	}
}

// BenchmarkBuildVsGenimage builds the same layout (FAT32 boot, squashfs
// root, ext4 data, with a 24 MiB kernel-sized file in each) with kiln and with
// genimage (.img only: genimage makes no .xz or .bmap), genimage twice: with
// its own squashfs defaults (gzip in 4 KiB blocks) and with kiln's (zstd
// level 3 in 128 KiB blocks), so the ratio is shown for the same bytes of
// work too. kiln's side includes what genimage does not do: the image's
// SHA-256 and the bmap with each range's SHA-256.
func BenchmarkBuildVsGenimage(b *testing.B) {
	_, src := testTree(&testing.T{})
	os.Remove(filepath.Join(src, "Mixed Case Name.Data"))
	os.WriteFile(filepath.Join(src, "kernel8.img"), benchPayload(24<<20), 0o644)
	defer os.RemoveAll(src)
	layout := func() *Layout {
		l := genimageLayout(b, src)
		l.Size = 128 << 20
		l.Partitions[1].Size, l.Partitions[2].Start, l.Partitions[2].Size = 32<<20, 73<<20, 48<<20
		return l
	}
	genimage := func(squashfs string) (wall, cpu time.Duration) {
		dir := writeGenimageConfig(b, layout(), src, squashfs)
		c0 := cpuTime(syscall.RUSAGE_CHILDREN)
		t0 := time.Now()
		cmd := exec.Command("genimage", "--config", filepath.Join(dir, "genimage.cfg"), "--rootpath", src,
			"--inputpath", src, "--outputpath", filepath.Join(dir, "out"), "--tmppath", filepath.Join(dir, "tmp"))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("genimage: %v\n%s", err, out)
		}
		return time.Since(t0), cpuTime(syscall.RUSAGE_CHILDREN) - c0
	}
	for i := 0; i < b.N; i++ {
		out := b.TempDir()
		c0 := cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN) // kiln runs mke2fs and mksquashfs
		t0 := time.Now()
		if _, err := Build(context.Background(), layout(), out, BuildOptions{NoXZ: true}); err != nil {
			b.Fatal(err)
		}
		dKiln := time.Since(t0)
		cKiln := cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN) - c0
		dGen, cGen := genimage("")
		dSame, cSame := genimage(`compression = "zstd" block-size = 131072 extraargs = "-Xcompression-level 3"`)
		b.Logf("build 128 MiB image (FAT32 + squashfs + ext4, 24 MiB kernel each): kiln %v (incl. image hash and bmap), genimage %v (its squashfs defaults), %v (kiln's squashfs settings); CPU time kiln (with mke2fs, mksquashfs) %v, genimage (with mksquashfs, mkfs.*) %v and %v",
			dKiln.Round(time.Millisecond), dGen.Round(time.Millisecond), dSame.Round(time.Millisecond),
			cKiln.Round(time.Millisecond), cGen.Round(time.Millisecond), cSame.Round(time.Millisecond))
		b.ReportMetric(dKiln.Seconds()/dGen.Seconds(), "kiln/genimage")
		b.ReportMetric(cKiln.Seconds()/cGen.Seconds(), "kiln/genimage-cpu")
		b.ReportMetric(dKiln.Seconds()/dSame.Seconds(), "kiln/genimage-same-squashfs")
		b.ReportMetric(cKiln.Seconds()/cSame.Seconds(), "kiln/genimage-same-squashfs-cpu")
	}
}

// cpuTime is the user + system time of this process (RUSAGE_SELF) or of
// its waited-for descendants (RUSAGE_CHILDREN).
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package rootfs_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/image/rootfs/rootfstest"
	"kiln.dev/kiln/internal/fetch"
)

// BenchmarkAssembleVsMmdebstrap assembles the small locked set with kiln
// and with mmdebstrap (root mode, custom variant, the same .debs already
// fetched, both under qemu-user) and prints the ratio.
func BenchmarkAssembleVsMmdebstrap(b *testing.B) {
	needSandbox(b)
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		b.Skip("mmdebstrap not installed")
	}
	l, debs := smallLock(b)
	repo := rootfstest.LocalRepo(b, filepath.Join(b.TempDir(), "repo"), debs)
	var kiln, mm, kilnCPU, mmCPU time.Duration
	for i := 0; i < b.N; i++ {
		c0 := cpuTime(syscall.RUSAGE_CHILDREN) + cpuTime(syscall.RUSAGE_SELF)
		t0 := time.Now()
		assemble(b, debs)
		kiln += time.Since(t0)
		c1 := cpuTime(syscall.RUSAGE_CHILDREN) + cpuTime(syscall.RUSAGE_SELF)
		kilnCPU += c1 - c0
		t0 = time.Now()
		rootfstest.RunMmdebstrap(b, filepath.Join(b.TempDir(), "mm"), repo, l, epoch)
		mm += time.Since(t0)
		mmCPU += cpuTime(syscall.RUSAGE_CHILDREN) + cpuTime(syscall.RUSAGE_SELF) - c1
	}
	b.ReportMetric(kiln.Seconds()/float64(b.N), "kiln-s")
	b.ReportMetric(mm.Seconds()/float64(b.N), "mmdebstrap-s")
	b.ReportMetric(kiln.Seconds()/mm.Seconds(), "kiln/mmdebstrap")
	// CPU time (user + system of every process each side ran, qemu's
	// emulation included): what each costs, whatever the machine's load.
	b.ReportMetric(kilnCPU.Seconds()/float64(b.N), "kiln-cpu-s")
	b.ReportMetric(mmCPU.Seconds()/float64(b.N), "mmdebstrap-cpu-s")
	b.ReportMetric(kilnCPU.Seconds()/mmCPU.Seconds(), "kiln/mmdebstrap-cpu")
}

// BenchmarkUnpackVsDpkgDeb unpacks every .deb of the small set with kiln's
// unpacker (its data.tar.xz decoded by the system's xz, as dpkg-deb's is by
// liblzma) and with dpkg-deb -x, and prints the ratio.
func BenchmarkUnpackVsDpkgDeb(b *testing.B) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		b.Skip("dpkg-deb not installed")
	}
	_, debs := smallLock(b)
	var kiln, dpkg, kilnCPU, dpkgCPU time.Duration
	for i := 0; i < b.N; i++ {
		dk, dd := b.TempDir(), b.TempDir()
		c0 := cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN) // kiln runs xz -d
		t0 := time.Now()
		for _, d := range debs {
			f, err := os.Open(d.Path)
			if err != nil {
				b.Fatal(err)
			}
			err = fetch.UnpackDeb(f, dk)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
		kiln += time.Since(t0)
		kilnCPU += cpuTime(syscall.RUSAGE_SELF) + cpuTime(syscall.RUSAGE_CHILDREN) - c0
		c0 = cpuTime(syscall.RUSAGE_CHILDREN)
		t0 = time.Now()
		for _, d := range debs {
			if out, err := exec.CommandContext(context.Background(), "dpkg-deb", "-x", d.Path, dd).CombinedOutput(); err != nil {
				b.Fatalf("dpkg-deb -x: %v %s", err, out)
			}
		}
		dpkg += time.Since(t0)
		dpkgCPU += cpuTime(syscall.RUSAGE_CHILDREN) - c0
	}
	b.ReportMetric(kiln.Seconds()/float64(b.N), "kiln-s")
	b.ReportMetric(dpkg.Seconds()/float64(b.N), "dpkg-deb-s")
	b.ReportMetric(kiln.Seconds()/dpkg.Seconds(), "kiln/dpkg-deb")
	// On a loaded machine the wall-clock ratio is mostly the load's; the
	// CPU time (user + system, dpkg-deb's tar and decompressor included)
	// is what each side costs.
	b.ReportMetric(kilnCPU.Seconds()/float64(b.N), "kiln-cpu-s")
	b.ReportMetric(dpkgCPU.Seconds()/float64(b.N), "dpkg-deb-cpu-s")
	b.ReportMetric(kilnCPU.Seconds()/dpkgCPU.Seconds(), "kiln/dpkg-deb-cpu")
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

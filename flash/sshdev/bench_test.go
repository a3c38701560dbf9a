package sshdev

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh/sshtest"
)

// BenchmarkDeltaUpdate256MiB: an A/B update of a 256 MiB root slot whose
// new image differs in 1% of its 4 KiB blocks, on a device whose inactive
// slot holds the old image. kiln's delta update against kiln's full write
// and against the usual `xz -dc root.xz | ssh dd` of the same slot, in one run.
func BenchmarkDeltaUpdate256MiB(b *testing.B) {
	const slot = 264 << 20
	f := sshtest.Start(b)
	old, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "be0be0be0be0be0be0b1", Seed: 1, RootSize: slot, Payload: 256 << 20, BothSlots: true})
	if err != nil {
		b.Fatal(err)
	}
	newer, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "be0be0be0be0be0be0b2", Seed: 1, RootSize: slot, Payload: 256 << 20, Changed: 0.01, ChangeSeed: 7})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	run := func(noDelta bool, helper string, rate string) *UpdateResult {
		dev, err := f.AddDevice(old)
		if err != nil {
			b.Fatal(err)
		}
		defer dev.Close()
		if rate != "" {
			if err := dev.LimitRate(rate); err != nil {
				b.Fatal(err)
			}
		}
		opts := UpdateOptions{HelperDir: helper, NoDelta: noDelta, BootTimeout: 30 * time.Second}
		res, err := Update(ctx, dialer(f, dev), dev.Name, newer, opts)
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	// The peer: the new root slot, compressed once (not timed), piped through
	// OpenSSH's client into dd on the device.
	imgf, img, _ := openImage(newer)
	p := img.Root
	rootXZ := filepath.Join(f.Dir, "root.xz")
	out, _ := os.Create(rootXZ)
	xz := exec.Command("xz", "-T0", "-1", "-c")
	xz.Stdin, xz.Stdout = io.NewSectionReader(imgf, p.Start, p.Size), out
	if err := xz.Run(); err != nil {
		b.Fatal(err)
	}
	out.Close()
	imgf.Close()
	st, _ := os.Stat(rootXZ)
	peer := func(rate string) time.Duration {
		dev, err := f.AddDevice(old)
		if err != nil {
			b.Fatal(err)
		}
		defer dev.Close()
		if rate != "" {
			dev.LimitRate(rate)
		}
		pipe := fmt.Sprintf("xz -dc %s | ssh -i %s -o UserKnownHostsFile=%s -o BatchMode=yes root@%s 'dd of=/dev/mmcblk0p5 bs=1M conv=fsync status=none'",
			rootXZ, f.ClientKey, f.KnownHosts, dev.Addr)
		start := time.Now()
		if out, err := exec.Command("sh", "-c", pipe).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		return time.Since(start)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, link := range []struct{ name, rate string }{{"loopback veth, unshaped", ""}, {"100 Mbit/s (a Pi 3B's Ethernet)", "100mbit"}} {
			delta := run(false, helperDir, link.rate)
			full := run(true, helperDir, link.rate)
			stock := run(false, "", link.rate)
			pt := peer(link.rate)
			b.StopTimer()
			fmt.Printf("ssh A/B update of a %d MiB root slot, 1%% of 4 KiB blocks changed, link %s (one run):\n", p.Size>>20, link.name)
			fmt.Printf("  kiln delta:      write+verify %6.2fs, whole update %6.2fs, %10d bytes sent (%.2f%% of slot + boot)\n", delta.WriteSec, delta.DurationSec, delta.BytesSent, 100*float64(delta.BytesSent)/float64(delta.BytesImage))
			fmt.Printf("  kiln full write: write+verify %6.2fs, whole update %6.2fs, %10d bytes sent\n", full.WriteSec, full.DurationSec, full.BytesSent)
			fmt.Printf("  kiln delta, stock tools only (1 MiB blocks): write+verify %6.2fs, %10d bytes sent (random changes touch most 1 MiB blocks)\n", stock.WriteSec, stock.BytesSent)
			fmt.Printf("  xz -dc | ssh dd: %6.2fs, %d bytes sent (root only: no verification, no trial boot)\n", pt.Seconds(), st.Size())
			fmt.Printf("  ratios: bytes delta/full %.3f (target <= 0.05); write+verify time delta/full %.2f (target <= 0.2); delta/(xz|ssh dd) %.2f; whole update delta/full %.2f\n",
				float64(delta.BytesSent)/float64(full.BytesSent), delta.WriteSec/full.WriteSec, delta.WriteSec/pt.Seconds(), delta.DurationSec/full.DurationSec)
			tag := "loopback"
			if link.rate != "" {
				tag = link.rate
			}
			b.ReportMetric(float64(delta.BytesSent)/float64(full.BytesSent), "delta/full-bytes")
			b.ReportMetric(delta.WriteSec/full.WriteSec, "delta/full-time-"+tag)
			b.ReportMetric(delta.WriteSec/pt.Seconds(), "delta/xz-ssh-dd-"+tag)
			b.StartTimer()
		}
	}
}

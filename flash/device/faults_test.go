package device_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/internal/emuwire"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
	"kiln.dev/kiln/flash/stk500v2"
	"kiln.dev/kiln/flash/stk500v2/stk500v2test"
)

type faultRun struct {
	seed     int64
	protocol string
	faults   emuwire.Faults
	img      *flash.Image
	err      error
	res      flash.Result
	device   []byte // the application area after the run
}

// randomFaults picks one to three faults for a run that moves about `bytes`
// bytes each way over `cmds` commands.
func randomFaults(r *rand.Rand, bytes, cmds int) (emuwire.Faults, string) {
	var f emuwire.Faults
	var names []string
	for n := 1 + r.Intn(3); n > 0; n-- {
		switch r.Intn(9) {
		case 0:
			f.DropRx = 1 + r.Intn(bytes)
			names = append(names, "drop-rx")
		case 1:
			f.CorruptRx = 1 + r.Intn(bytes)
			names = append(names, "corrupt-rx")
		case 2:
			f.DropTx = 1 + r.Intn(bytes)
			names = append(names, "drop-tx")
		case 3:
			f.CorruptTx = 1 + r.Intn(bytes)
			names = append(names, "corrupt-tx")
		case 4:
			f.DelayTx, f.Delay = 1+r.Intn(bytes), time.Duration(r.Intn(150))*time.Millisecond
			names = append(names, "delay")
		case 5:
			f.Nack = 1 + r.Intn(cmds)
			names = append(names, "nack")
		case 6, 7:
			// Stop answering in the middle of the write.
			f.StopAfter = bytes/8 + r.Intn(bytes/2)
			names = append(names, "stop-mid-write")
		case 8:
			f.Rate, f.Seed = 0.0002+r.Float64()*0.002, r.Int63()
			names = append(names, "random")
		}
	}
	return f, strings.Join(names, "+")
}

func runOne(seed int64) (faultRun, string) {
	r := rand.New(rand.NewSource(seed))
	run := faultRun{seed: seed}
	size := 256 + r.Intn(3*1024)
	var addr uint32
	if r.Intn(2) == 0 {
		run.protocol = "stk500v1"
		addr = uint32(r.Intn(64)) * 128
	} else {
		run.protocol = "stk500v2"
		addr = uint32(r.Intn(16)) * 256
	}
	data := make([]byte, size)
	r.Read(data)
	if r.Intn(3) == 0 {
		addr++ // an odd start: partial pages at both ends
	}
	run.img, _ = flash.NewImage(fmt.Sprintf("seed-%d", seed), flash.Segment{Addr: addr, Data: data})
	traffic := int(addr) + size + size/128*8 + 64
	var desc string
	run.faults, desc = randomFaults(r, traffic, traffic/128+8)

	host, board := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var serve func(context.Context) error
	var reset func()
	var app func() []byte
	var target flash.Target
	var connect func(context.Context) error
	timeout := 80 * time.Millisecond
	switch run.protocol {
	case "stk500v1":
		cfg := stk500test.Uno()
		cfg.Faults = run.faults
		dev := stk500test.New(cfg)
		serve = func(ctx context.Context) error { return dev.Serve(ctx, board) }
		reset, app = dev.Reset, dev.AppFlash
		c := stk500.New(host, stk500.Config{Signature: cfg.Signature, PageSize: 128, Tries: 4, Timeout: timeout,
			Reset: func(context.Context) error { reset(); return nil }, BootTime: time.Millisecond})
		target, connect = c, c.Connect
	default:
		cfg := stk500v2test.Mega2560()
		cfg.Faults = run.faults
		dev := stk500v2test.New(cfg)
		serve = func(ctx context.Context) error { return dev.Serve(ctx, board) }
		reset, app = dev.Reset, dev.AppFlash
		c := stk500v2.New(host, stk500v2.Config{Signature: cfg.Signature, PageSize: 256, FlashSize: cfg.FlashSize, Tries: 4, Timeout: timeout,
			Reset: func(context.Context) error { reset(); return nil }, BootTime: time.Millisecond})
		target, connect = c, c.Connect
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- serve(sctx) }()
	run.err = connect(ctx)
	if run.err == nil {
		run.res, run.err = flash.Program(ctx, target, run.img, nil)
	}
	stop()
	host.Close()
	board.Close()
	<-done
	run.device = app()
	return run, desc
}

// TestRandomFaultsNeverFalseSuccess flashes 240 random images through both
// emulators with random faults (drop, corrupt, delay, NACK, stop answering
// mid-write, random noise) and holds kiln to its promise: a reported success
// means the device holds the image, byte for byte (checked in the emulator,
// not through the protocol); every failure is one clear line that maps to
// exit 1, or exit 3 for a verification mismatch.
func TestRandomFaultsNeverFalseSuccess(t *testing.T) {
	const runs = 240
	base := time.Now().UnixNano()
	t.Logf("base seed %d", base)
	results := make([]faultRun, runs)
	descs := make([]string, runs)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range results {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			results[i], descs[i] = runOne(base + int64(i))
		}(i)
	}
	wg.Wait()
	var ok, exit1, exit3, stopped, stoppedFailed int
	perProto := map[string]int{}
	for i, run := range results {
		perProto[run.protocol]++
		if run.faults.StopAfter > 0 {
			stopped++
		}
		if run.err == nil {
			ok++
			if !run.res.Verified {
				t.Errorf("seed %d (%s, %s): success without verification", run.seed, run.protocol, descs[i])
			}
			for _, s := range run.img.Segments {
				if !bytes.Equal(run.device[s.Addr:int(s.Addr)+len(s.Data)], s.Data) {
					t.Errorf("seed %d (%s, %s): FALSE SUCCESS: the device does not hold the image", run.seed, run.protocol, descs[i])
				}
			}
			continue
		}
		if run.faults.StopAfter > 0 {
			stoppedFailed++
		}
		msg := run.err.Error()
		clear := strings.HasPrefix(msg, "stk500") || strings.HasPrefix(msg, "read back") ||
			(errors.Is(run.err, flash.ErrVerify) && strings.HasPrefix(msg, "first difference at 0x"))
		if strings.Contains(msg, "\n") || !clear {
			t.Errorf("seed %d: unclear error %q", run.seed, msg)
		}
		known := []error{flash.ErrVerify, flash.ErrNoAnswer, flash.ErrWrongDevice, stk500.ErrNoSync, stk500v2.ErrStatus, stk500v2.ErrChecksum}
		found := false
		for _, k := range known {
			found = found || errors.Is(run.err, k)
		}
		if !found && !strings.Contains(msg, "FAILED") {
			t.Errorf("seed %d (%s, %s): error of no known kind: %v", run.seed, run.protocol, descs[i], run.err)
		}
		if errors.Is(run.err, flash.ErrVerify) {
			exit3++
		} else {
			exit1++
		}
	}
	t.Logf("%d runs (%v): %d verified successes, %d failures with exit 1, %d with exit 3; %d stopped mid-write, %d of them failed",
		runs, perProto, ok, exit1, exit3, stopped, stoppedFailed)
	if ok == 0 || exit1 == 0 || stoppedFailed == 0 {
		t.Errorf("the mix is not exercised: %d successes, %d failures, %d mid-write stops that failed", ok, exit1, stoppedFailed)
	}
}

package sshdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/ssh/sshtest"
)

func TestUpdateSurvivesRandomPowerCuts(t *testing.T) {
	const devices, rounds = 4, 13 // 52 interruptions
	// Every card holds a kiln-built image; the updates go to two other
	// versions of the same recipe, alternately.
	f := sshtest.Start(t)
	v0, _, err := sshtest.KilnImage(f.Dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var devs []*sshtest.Device
	for i := 0; i < devices; i++ {
		d, err := f.AddDevice(v0)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	imgs := map[string]string{}
	var drvs []string
	for _, motd := range []string{"version 1\n", "version 2\n"} {
		p, drv, err := sshtest.KilnImage(f.Dir, motd)
		if err != nil {
			t.Fatal(err)
		}
		imgs[drv] = p
		drvs = append(drvs, drv)
	}
	// How many device commands does an uninterrupted update run? Each cut
	// lands during or just after a random one of them, whatever the load.
	var probe atomic.Int64
	if _, err := Update(context.Background(), counting(dialer(f, devs[0]), &probe, 0, nil), "probe", imgs[drvs[0]], fastOpts()); err != nil {
		t.Fatalf("uninterrupted update: %v", err)
	}
	commands := probe.Load()
	t.Logf("an uninterrupted update runs %d device commands", commands)

	opts := fastOpts()
	opts.BootTimeout = 8 * time.Second // also how long kiln looks for a device that lost power at the commit
	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	for di, dev := range devs {
		wg.Add(1)
		go func(di int, dev *sshtest.Device) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(di) + 99))
			for r := 0; r < rounds; r++ {
				oldBoot, oldRoot := dev.BootPartition(), dev.Root()
				oldDrv, _, _ := dev.SlotDerivations(oldBoot, oldRoot)
				newDrv := drvs[r%2]
				if newDrv == oldDrv {
					newDrv = drvs[(r+1)%2]
				}
				// Cut during or right after command k (k past the last
				// command: after the update finished). In odd rounds power
				// returns while kiln may still be trying to reach the device.
				k := 1 + rng.Int63n(commands+3)
				delay := time.Duration(rng.Int63n(int64(40 * time.Millisecond)))
				restore := time.Duration(-1)
				if r%2 == 1 {
					restore = time.Duration(rng.Int63n(int64(1500 * time.Millisecond)))
				}
				cut := fmt.Sprintf("command %d+%v, power back after %v", k, delay, restore)
				var n atomic.Int64
				cutDone := make(chan struct{})
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				var err error
				_, err = Update(ctx, counting(dialer(f, dev), &n, k, func() {
					go func() {
						time.Sleep(delay)
						dev.PowerCut()
						if restore >= 0 {
							time.Sleep(restore)
							if err := dev.Boot(false); err != nil {
								t.Errorf("%s round %d (cut at %s): device does not boot: %v", dev.Name, r, cut, err)
							}
						}
						close(cutDone)
					}()
				}), dev.Name, imgs[newDrv], opts)
				if n.Load() >= k {
					<-cutDone
				}
				cancel()
				// Power returns: a normal boot, no tryboot flag.
				if berr := dev.PowerCycle(); berr != nil {
					t.Errorf("%s round %d (cut at %s): device does not boot: %v", dev.Name, r, cut, berr)
					return
				}
				bootDrv, rootDrv, cl := dev.SlotDerivations(dev.BootPartition(), dev.Root())
				outcome := "old"
				switch {
				case bootDrv != rootDrv:
					t.Errorf("%s round %d (cut at %s): MIXED system: boot partition %d says %s, root %d holds %s", dev.Name, r, cut, dev.BootPartition(), bootDrv, dev.Root(), rootDrv)
				case rootDrv == newDrv:
					outcome = "new"
				case rootDrv != oldDrv:
					t.Errorf("%s round %d: runs %s, neither old %s nor new %s", dev.Name, r, rootDrv, oldDrv, newDrv)
				}
				// What kiln said must be what happened.
				switch {
				case err == nil && outcome != "new":
					t.Errorf("%s round %d (cut at %s): update reported success but the device runs the old image", dev.Name, r, cut)
				case errors.Is(err, ErrRolledBack) && outcome != "old":
					t.Errorf("%s round %d (cut at %s): update reported a rollback but the device runs the new image: %v", dev.Name, r, cut, err)
				case err != nil && outcome == "new" && !errors.Is(err, ErrCommitUnknown):
					t.Errorf("%s round %d (cut at %s): the device committed the new image but kiln reported %v", dev.Name, r, cut, err)
				}
				if !strings.Contains(cl, "root=PARTUUID=") {
					t.Errorf("%s round %d: cmdline %q", dev.Name, r, cl)
				}
				mu.Lock()
				kind := "ok"
				switch {
				case errors.Is(err, ErrRolledBack):
					kind = "rolled-back"
				case errors.Is(err, ErrCommitUnknown):
					kind = "commit-unknown"
				case err != nil:
					kind = "failed"
				}
				outcomes[outcome+"/"+kind]++
				mu.Unlock()
			}
		}(di, dev)
	}
	wg.Wait()
	t.Logf("outcomes of %d interrupted updates: %v", devices*rounds, outcomes)
	if outcomes["old/failed"]+outcomes["old/rolled-back"] == 0 || outcomes["new/ok"] == 0 {
		t.Errorf("cuts did not land on both sides of the commit: %v", outcomes)
	}
}

// counting wraps a ssh.Dialer so every command run on the device is counted in
// n; when the count reaches at (if > 0), cut is called once.
func counting(d ssh.Dialer, n *atomic.Int64, at int64, cut func()) ssh.Dialer {
	return wrapDialer(d, func(c ssh.RunCloser) ssh.RunCloser { return countingConn{c, n, at, cut} })
}

// wrapDialer wraps every connection d opens.
func wrapDialer(d ssh.Dialer, wrap func(ssh.RunCloser) ssh.RunCloser) ssh.Dialer {
	return func(ctx context.Context) (ssh.RunCloser, error) {
		c, err := d(ctx)
		if err != nil {
			return nil, err
		}
		return wrap(c), nil
	}
}

type countingConn struct {
	ssh.RunCloser
	n   *atomic.Int64
	at  int64
	cut func()
}

func (c countingConn) Run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	if c.n.Add(1) == c.at && c.cut != nil {
		c.cut()
	}
	return c.RunCloser.Run(ctx, cmd, stdin, stdout)
}

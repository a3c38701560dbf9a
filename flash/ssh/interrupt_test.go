package ssh

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh/sshtest"
)

// system reads what a slot holds, with the real tools only: the derivation
// in the boot partition's kiln.json (mtools), the root its cmdline.txt names
// and the derivation the root file system carries (unsquashfs).
func system(t *testing.T, dev *sshtest.Device, boot, root int) (bootDrv, rootDrv, cmdline string) {
	t.Helper()
	kj, err := exec.Command("mtype", "-i", dev.PartDev(boot), "::kiln.json").Output()
	if err == nil {
		var m struct{ Derivation string }
		json.Unmarshal(kj, &m)
		bootDrv = m.Derivation
	}
	cl, _ := exec.Command("mtype", "-i", dev.PartDev(boot), "::cmdline.txt").Output()
	rd, _ := exec.Command("unsquashfs", "-cat", dev.PartDev(root), "etc/kiln-derivation").Output()
	return bootDrv, strings.TrimSpace(string(rd)), string(cl)
}

func TestUpdateSurvivesRandomPowerCuts(t *testing.T) {
	const devices, rounds = 4, 13 // 52 interruptions
	f, devs, _ := fleet(t, devices, sshtest.ImageSpec{Derivation: "0000000000000000a0a0", Seed: 10})
	imgs := map[string]string{}
	for i, drv := range []string{"1010101010101010b1b1", "2020202020202020c2c2"} {
		p, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: drv, Seed: int64(20 + i)})
		if err != nil {
			t.Fatal(err)
		}
		imgs[drv] = p
	}
	drvs := []string{"1010101010101010b1b1", "2020202020202020c2c2"}
	// How long does an uninterrupted update take? Cuts land anywhere in it.
	start := time.Now()
	if _, err := Update(context.Background(), dialer(f, devs[0]), "probe", imgs[drvs[0]], fastOpts()); err != nil {
		t.Fatalf("uninterrupted update: %v", err)
	}
	span := time.Since(start)
	t.Logf("an uninterrupted update takes %v", span)

	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	for di, dev := range devs {
		wg.Add(1)
		go func(di int, dev *sshtest.Device) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(di) + 99))
			for r := 0; r < rounds; r++ {
				oldBoot, oldRoot := dev.BootPart, dev.Running
				oldDrv, _, _ := system(t, dev, oldBoot, oldRoot)
				newDrv := drvs[r%2]
				if newDrv == oldDrv {
					newDrv = drvs[(r+1)%2]
				}
				cut := time.Duration(rng.Int63n(int64(span) * 12 / 10))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				errc := make(chan error, 1)
				go func() {
					_, err := Update(ctx, dialer(f, dev), dev.Name, imgs[newDrv], fastOpts())
					errc <- err
				}()
				var err error
				select {
				case err = <-errc:
				case <-time.After(cut):
					dev.PowerCut()
					err = <-errc
				}
				cancel()
				// Power returns: a normal boot, no tryboot flag.
				if berr := dev.PowerCycle(); berr != nil {
					t.Errorf("%s round %d (cut at %v): device does not boot: %v", dev.Name, r, cut, berr)
					return
				}
				bootDrv, rootDrv, cl := system(t, dev, dev.BootPart, dev.Running)
				outcome := "old"
				switch {
				case bootDrv != rootDrv:
					t.Errorf("%s round %d (cut at %v): MIXED system: boot partition %d says %s, root %d holds %s", dev.Name, r, cut, dev.BootPart, bootDrv, dev.Running, rootDrv)
				case rootDrv == newDrv:
					outcome = "new"
				case rootDrv != oldDrv:
					t.Errorf("%s round %d: runs %s, neither old %s nor new %s", dev.Name, r, rootDrv, oldDrv, newDrv)
				}
				if err == nil && outcome != "new" {
					t.Errorf("%s round %d: update reported success but the device runs the old image", dev.Name, r)
				}
				if !strings.Contains(cl, "root=PARTUUID=") {
					t.Errorf("%s round %d: cmdline %q", dev.Name, r, cl)
				}
				mu.Lock()
				outcomes[fmt.Sprintf("%s/err=%v", outcome, err != nil)]++
				mu.Unlock()
			}
		}(di, dev)
	}
	wg.Wait()
	t.Logf("outcomes of %d interrupted updates: %v", devices*rounds, outcomes)
	if outcomes["old/err=true"] == 0 || outcomes["new/err=false"]+outcomes["new/err=true"] == 0 {
		t.Errorf("cuts did not land on both sides of the commit: %v", outcomes)
	}
}

package sshtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/store"
)

// KilnImage builds testdata/ab-appliance — a small A/B image recipe with no
// external inputs — with kiln's own image builder into dir and returns
// image.img and its derivation. A non-empty motd replaces rootfs/etc/motd,
// which makes another derivation: another version of the same system.
func KilnImage(dir, motd string) (path, derivation string, err error) {
	_, self, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(self), "..", "..", "..", "testdata", "ab-appliance")
	work, err := os.MkdirTemp(dir, "kiln-image-")
	if err != nil {
		return "", "", err
	}
	recipe := filepath.Join(work, "ab-appliance")
	if out, err := exec.Command("cp", "-r", src, recipe).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("copy %s: %v: %s", src, err, out)
	}
	if motd != "" {
		if err := os.WriteFile(filepath.Join(recipe, "rootfs/etc/motd"), []byte(motd), 0o644); err != nil {
			return "", "", err
		}
	}
	st, err := store.Open(filepath.Join(work, "store"))
	if err != nil {
		return "", "", err
	}
	out := filepath.Join(work, "out")
	res, err := recipebuild.Build(context.Background(), recipe, out, recipebuild.Options{Store: st, NoXZ: true})
	if err != nil {
		return "", "", fmt.Errorf("build %s: %w", recipe, err)
	}
	return filepath.Join(out, "image.img"), res.Derivation, nil
}

// RootDerivationFile is where a kiln-built root slot names its derivation.
const RootDerivationFile = "etc/kiln/derivation"

// SlotDerivations reads what a device's slot holds with the real tools only:
// the derivation in the boot partition's kiln.json (mtools) and the one the
// root file system carries (unsquashfs), and the boot partition's cmdline.txt.
func (d *Device) SlotDerivations(boot, root int) (bootDrv, rootDrv, cmdline string) {
	if kj, err := exec.Command("mtype", "-i", d.PartDev(boot), "::kiln.json").Output(); err == nil {
		var m struct{ Derivation string }
		json.Unmarshal(kj, &m)
		bootDrv = m.Derivation
	}
	cl, _ := exec.Command("mtype", "-i", d.PartDev(boot), "::cmdline.txt").Output()
	rd, _ := exec.Command("unsquashfs", "-cat", d.PartDev(root), RootDerivationFile).Output()
	return bootDrv, strings.TrimSpace(string(rd)), string(cl)
}

package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/flash/ssh/sshtest"
)

// runKiln runs the real binary and returns stdout, stderr and the exit code.
func runKilnSSH(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(kilnBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestUpdateAndFleetThroughTheBinary drives kiln update, kiln flash over
// ssh:// and kiln fleet status against a real sshd test device. No helper
// sits beside this kiln binary, so the device side runs on stock tools only.
func TestUpdateAndFleetThroughTheBinary(t *testing.T) {
	f := sshtest.Start(t)
	v1, err := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "c11c11c11c11c11c1111", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "c22c22c22c22c22c2222", Seed: 2})
	dev, err := f.AddDevice(v1)
	if err != nil {
		t.Fatal(err)
	}
	port := "ssh://root@" + dev.Addr
	auth := []string{"--ssh-key", f.ClientKey, "--known-hosts", f.KnownHosts}

	// An image for another board is refused before a byte is written: the
	// device runs an rpi-3b image (its kiln.json), and so does --board.
	pi4, _ := sshtest.BuildImage(f.Dir, sshtest.ImageSpec{Derivation: "c44c44c44c44c44c4444", Seed: 4, Board: "rpi-4b"})
	if _, errs, code := runKilnSSH(t, append(append([]string{"update", "--port", port}, auth...), pi4)...); code != 1 ||
		!strings.Contains(errs, "is an image for rpi-4b, but "+dev.Addr) || !strings.Contains(errs, "runs an image for rpi-3b") {
		t.Fatalf("update with an rpi-4b image: exit %d: %s", code, errs)
	}
	if _, errs, code := runKilnSSH(t, append(append([]string{"update", "--board", "rpi-4b", "--port", port}, auth...), v2)...); code != 1 ||
		!strings.Contains(errs, "was built for rpi-3b, not rpi-4b") {
		t.Fatalf("update --board rpi-4b with an rpi-3b image: exit %d: %s", code, errs)
	}
	if dev.Root() != 4 {
		t.Fatalf("a refused update changed the device: it runs root %d", dev.Root())
	}

	// A/B update, JSON for scripts.
	out, errs, code := runKilnSSH(t, append(append([]string{"update", "--port", port, "--health", "/usr/bin/health", "--boot-timeout", "20s", "--json"}, auth...), v2)...)
	if code != 0 {
		t.Fatalf("kiln update: exit %d\n%s%s", code, out, errs)
	}
	var res struct {
		Update struct {
			Committed  bool   `json:"committed"`
			To         string `json:"to_slot"`
			RootSHA256 string `json:"root_sha256"`
			UsedHelper bool   `json:"used_helper"`
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Update.Committed || res.Update.To != "b" || res.Update.UsedHelper {
		t.Fatalf("update json: %v %s", err, out)
	}
	if dev.Root() != 5 {
		t.Fatalf("device runs root %d", dev.Root())
	}

	// Fleet status: the device now runs v2, the fleet declares v2.
	fleetFile := filepath.Join(f.Dir, "fleet.toml")
	os.WriteFile(fleetFile, []byte(fmt.Sprintf("ssh_key = %q\nknown_hosts = %q\n[[group]]\nname = \"g\"\nimage = %q\n[[device]]\nname = \"pi\"\nurl = \"%s/dev/mmcblk0\"\ngroup = \"g\"\n",
		f.ClientKey, f.KnownHosts, v2, port)), 0o644)
	out, errs, code = runKilnSSH(t, "fleet", "status", fleetFile)
	if code != 0 || !strings.Contains(out, "0 of 1 devices drift") {
		t.Fatalf("fleet status: exit %d\n%s%s", code, out, errs)
	}
	out, errs, code = runKilnSSH(t, "fleet", "status", "--verify", fleetFile)
	if code != 0 || !strings.Contains(out, "ok (verified on the device)") || !strings.Contains(out, "0 of 1 devices drift") {
		t.Fatalf("fleet status --verify: exit %d\n%s%s", code, out, errs)
	}

	// Whole-device write to a card reader on the device.
	disk, err := dev.AddDisk("sdq", 40<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, errs, code = runKilnSSH(t, append(append([]string{"flash", "--port", port + "/dev/sdq"}, auth...), v1)...)
	if code != 0 || !strings.Contains(out, "of the written ranges, read from the device") {
		t.Fatalf("kiln flash ssh: exit %d\n%s%s", code, out, errs)
	}
	want, _ := os.ReadFile(v1)
	got, _ := os.ReadFile(disk)
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("the card reader does not hold the image")
	}

	// A wrong host key: refused with a hint, exit 1, device untouched.
	kh := filepath.Join(f.Dir, "kh-wrong")
	other := filepath.Join(f.Dir, "otherkey")
	exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).Run()
	pub, _ := os.ReadFile(other + ".pub")
	os.WriteFile(kh, []byte(dev.Addr+" "+strings.Join(strings.Fields(string(pub))[:2], " ")+"\n"), 0o600)
	boots := dev.Boots()
	_, errs, code = runKilnSSH(t, "update", "--port", port, "--ssh-key", f.ClientKey, "--known-hosts", kh, v1)
	if code != 1 || !strings.Contains(errs, "kiln: ") || !strings.Contains(errs, "host key") || !strings.Contains(errs, "hint:") {
		t.Fatalf("wrong host key: exit %d: %s", code, errs)
	}
	if dev.Boots() != boots || dev.Root() != 5 {
		t.Fatal("device touched after a host key failure")
	}
}

// TestAuditImageOnDevice: kiln audit rebuilds an image recipe and compares
// the slot a device runs, hashed on the device over SSH, with the rebuild.
func TestAuditImageOnDevice(t *testing.T) {
	f := sshtest.Start(t)
	store, out := filepath.Join(t.TempDir(), "store"), filepath.Join(t.TempDir(), "out")
	recipe := "../../testdata/ab-appliance"
	if o, e, code := runKilnSSH(t, "image", "build", "--store", store, "--out", out, recipe); code != 0 {
		t.Fatalf("kiln image build: exit %d\n%s%s", code, o, e)
	}
	dev, err := f.AddDevice(filepath.Join(out, "image.img"))
	if err != nil {
		t.Fatal(err)
	}
	audit := []string{"audit", recipe, "--port", "ssh://root@" + dev.Addr, "--ssh-key", f.ClientKey, "--known-hosts", f.KnownHosts, "--store", store}
	o, e, code := runKilnSSH(t, audit...)
	if code != 0 || !strings.Contains(o, "identical: the running slot holds exactly the rebuild") {
		t.Fatalf("audit of an untouched device: exit %d\n%s%s", code, o, e)
	}
	// Eight bytes of the running root changed behind kiln's back.
	part, err := os.OpenFile(dev.PartDev(dev.Root()), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	part.WriteAt([]byte("tampered"), 4096)
	part.Sync()
	part.Close()
	o, e, code = runKilnSSH(t, append(audit, "--json")...)
	var rep struct {
		Identical bool
		Slot      struct {
			Root       int    `json:"root_partition"`
			RootSHA256 string `json:"root_sha256"`
			WantRoot   string `json:"want_root_sha256"`
			BootSHA256 string `json:"boot_sha256"`
			WantBoot   string `json:"want_boot_sha256"`
		}
	}
	if err := json.Unmarshal([]byte(o), &rep); err != nil || code != 3 || rep.Identical {
		t.Fatalf("audit of a tampered device: exit %d, %v\n%s%s", code, err, o, e)
	}
	if rep.Slot.Root != dev.Root() || rep.Slot.RootSHA256 == rep.Slot.WantRoot || rep.Slot.BootSHA256 != rep.Slot.WantBoot {
		t.Fatalf("audit names the wrong difference: %+v", rep.Slot)
	}
	if !strings.Contains(e, "root partition") {
		t.Errorf("the error does not name the root partition: %s", e)
	}
	// Both audits are in the audit log, with the device's own root hash.
	logged, _ := os.ReadFile(os.Getenv("KILN_LOG"))
	if !strings.Contains(string(logged), rep.Slot.RootSHA256) || !strings.Contains(string(logged), `"different"`) {
		t.Errorf("the audit log lacks the device audit (%d bytes)", len(logged))
	}
}

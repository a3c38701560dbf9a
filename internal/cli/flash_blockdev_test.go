package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlashBlockdevThroughTheBinary: kiln flash --port /dev/loopN writes a
// kiln-built image (.img.xz with its bmap) to a loop device standing in for
// an SD card, proves it, and reports the artifact's hash; without --force a
// non-removable disk is refused, and so is an image for another board
// (exit 1, a hint, the card untouched); a card corrupted between the write
// and the read-back fails with exit 3.
func TestFlashBlockdevThroughTheBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	store, out := filepath.Join(t.TempDir(), "store"), filepath.Join(t.TempDir(), "out")
	if o, e, code := runKilnSSH(t, "image", "build", "--store", store, "--out", out, "../../testdata/ab-appliance"); code != 0 {
		t.Fatalf("kiln image build: exit %d\n%s%s", code, o, e)
	}
	st, err := os.Stat(filepath.Join(out, "image.img"))
	if err != nil {
		t.Fatal(err)
	}
	backing := filepath.Join(t.TempDir(), "card")
	if err := os.WriteFile(backing, make([]byte, st.Size()+(8<<20)), 0o644); err != nil {
		t.Fatal(err)
	}
	lo, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Skipf("no loop device here: %v", err)
	}
	dev := strings.TrimSpace(string(lo))
	defer exec.Command("losetup", "-d", dev).Run()
	log := filepath.Join(t.TempDir(), "audit.jsonl")

	_, errs, code := runKilnSSH(t, "flash", "--port", dev, "--log", log, filepath.Join(out, "image.img.xz"))
	if code != 1 || !strings.Contains(errs, "not removable") || !strings.Contains(errs, "hint:") {
		t.Fatalf("non-removable without --force: exit %d: %s", code, errs)
	}
	if b, _ := os.ReadFile(backing); strings.Trim(string(b), "\x00") != "" {
		t.Fatal("a refused flash wrote to the card")
	}

	// An image for another board: refused before the card is opened.
	_, errs, code = runKilnSSH(t, "flash", "--port", dev, "--force", "--board", "rpi-4b", "--log", log, filepath.Join(out, "image.img.xz"))
	if code != 1 || !strings.Contains(errs, "not rpi-4b") || !strings.Contains(errs, "hint: nothing was written") {
		t.Fatalf("image for another board: exit %d: %s", code, errs)
	}
	if b, _ := os.ReadFile(backing); strings.Trim(string(b), "\x00") != "" {
		t.Fatal("an image for another board was written to the card")
	}

	// A bmap whose image size is not the image's: refused by sentinel
	// (disk.ErrBmap) with a hint, before the card is opened.
	bmapText, err := os.ReadFile(filepath.Join(out, "image.bmap"))
	if err != nil {
		t.Fatal(err)
	}
	sizeTag := fmt.Sprintf("<ImageSize> %d </ImageSize>", st.Size())
	if !strings.Contains(string(bmapText), sizeTag) {
		t.Fatalf("image.bmap has no %s", sizeTag)
	}
	other := filepath.Join(t.TempDir(), "other.bmap")
	os.WriteFile(other, []byte(strings.Replace(string(bmapText), sizeTag, fmt.Sprintf("<ImageSize> %d </ImageSize>", st.Size()+4096), 1)), 0o644)
	_, errs, code = runKilnSSH(t, "flash", "--port", dev, "--force", "--bmap", other, "--log", log, filepath.Join(out, "image.img.xz"))
	if code != 1 || !strings.Contains(errs, fmt.Sprintf("is %d bytes, its bmap says %d", st.Size(), st.Size()+4096)) ||
		!strings.Contains(errs, "hint: use the bmap built with this image") || strings.Count(errs, "\n") != 2 {
		t.Fatalf("bmap of another size: exit %d: %s", code, errs)
	}
	if b, _ := os.ReadFile(backing); strings.Trim(string(b), "\x00") != "" {
		t.Fatal("an image with a wrong bmap was written to the card")
	}

	// A card that loses part of the write (4 KiB overwritten between the
	// write and the read-back, by a kiln built with -tags kilnfault):
	// exit 3, and the audit log says the write was not proven.
	faulty := filepath.Join(t.TempDir(), "kiln-fault")
	if o, err := exec.Command("go", "build", "-tags", "kilnfault", "-o", faulty, "kiln.dev/kiln/cmd/kiln").CombinedOutput(); err != nil {
		t.Fatalf("build kiln -tags kilnfault: %v\n%s", err, o)
	}
	cmd := exec.Command(faulty, "flash", "--port", dev, "--force", "--log", log, filepath.Join(out, "image.img.xz"))
	cmd.Env = append(os.Environ(), "KILN_FAULT_BLOCKDEV_CORRUPT=1048576") // partition 1's first sectors: mapped
	var ferr strings.Builder
	cmd.Stderr = &ferr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(ferr.String(), "verification failed") {
		t.Fatalf("corrupted card: %v\n%s", err, ferr.String())
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "verification failed") {
		t.Errorf("audit log does not record the failed proof: %s", b)
	}

	o, errs, code := runKilnSSH(t, "flash", "--port", "blockdev:"+dev, "--force", "--json", "--log", log, filepath.Join(out, "image.img.xz"))
	if code != 0 {
		t.Fatalf("kiln flash: exit %d\n%s%s", code, o, errs)
	}
	var rep struct {
		Protocol       string
		ArtifactSHA256 string `json:"artifact_sha256"`
		ImageSHA256    string `json:"image_sha256"`
		DeviceSHA256   string `json:"device_sha256"`
		Verified       bool
		Disk           struct {
			Verified     bool
			DeviceSHA256 string `json:"device_sha256"`
		} `json:"disk"`
	}
	if err := json.Unmarshal([]byte(o), &rep); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	if !rep.Verified || !rep.Disk.Verified || rep.Disk.DeviceSHA256 == "" || rep.Protocol != "blockdev" {
		t.Errorf("report: %s", o)
	}
	img, _ := os.ReadFile(filepath.Join(out, "image.img"))
	card, _ := os.ReadFile(backing)
	if string(card[:len(img)]) != string(img) {
		t.Error("the card does not hold the image")
	}
	full := sha256.Sum256(img)
	if rep.ImageSHA256 != hex.EncodeToString(full[:]) {
		t.Errorf("plain image hash %s, the image's %x", rep.ImageSHA256, full)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), `"readback_sha256":"`+rep.DeviceSHA256+`","derivation"`) ||
		!strings.Contains(string(b), `"result":"ok"`) || rep.DeviceSHA256 != rep.Disk.DeviceSHA256 {
		t.Errorf("audit log (device %s, disk %s, artifact %s): %s", rep.DeviceSHA256, rep.Disk.DeviceSHA256, rep.ArtifactSHA256, b)
	}
}

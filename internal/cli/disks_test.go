package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/flash/device"
)

// fakeSysfs makes a machine with one USB card reader holding a 32 GB card
// (removable) and a system disk (not removable).
func fakeSysfs(t *testing.T) device.DiskListOptions {
	root := t.TempDir()
	o := device.DiskListOptions{Sys: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev"), Proc: filepath.Join(root, "proc")}
	for f, s := range map[string]string{
		"sys/block/sda/dev": "8:0", "sys/block/sda/size": "1953525168", "sys/block/sda/removable": "0",
		"sys/block/sdb/dev": "8:16", "sys/block/sdb/size": "62333952", "sys/block/sdb/removable": "1",
		"sys/block/sdb/device/vendor": "Generic", "sys/block/sdb/device/model": "STORAGE DEVICE",
		"proc/mountinfo": "22 1 8:0 / / rw - ext4 /dev/sda rw",
	} {
		p := filepath.Join(root, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(o.Dev, "disk", "by-id"), 0o755)
	os.Symlink("../../sdb", filepath.Join(o.Dev, "disk", "by-id", "usb-Generic_STORAGE_DEVICE_0001-0:0"))
	return o
}

func runMain(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"kiln"}, args...), strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// kiln flash --port auto with an image lists the removable disks (path,
// size, model, by-id; JSON with --json) and writes none: exit 2 and a hint
// naming how to choose.
func TestFlashAutoListsRemovableDisks(t *testing.T) {
	diskList = fakeSysfs(t)
	defer func() { diskList = device.DiskListOptions{} }()
	img := filepath.Join(t.TempDir(), "card.img")
	os.WriteFile(img, make([]byte, 4096), 0o644)

	out, errs, code := runMain(t, "flash", "--port", "auto", img)
	if code != ExitUsage || !strings.Contains(errs, "does not choose a disk") || !strings.Contains(errs, "hint: name the card: kiln flash --port "+diskList.Dev+"/sdb") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	want := diskList.Dev + "/sdb  31.9 GB  Generic STORAGE DEVICE  " + diskList.Dev + "/disk/by-id/usb-Generic_STORAGE_DEVICE_0001-0:0\n"
	if out != want {
		t.Errorf("listed:\n%s\nwant:\n%s", out, want)
	}

	out, _, code = runMain(t, "flash", "--port", "auto", "--json", img)
	var list struct{ Disks []device.LocalDisk }
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != ExitUsage {
		t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
	}
	if len(list.Disks) != 1 || list.Disks[0].Size != 62333952*512 || list.Disks[0].Model != "STORAGE DEVICE" || len(list.Disks[0].ByID) != 1 || !list.Disks[0].Removable {
		t.Errorf("--json: %+v", list.Disks)
	}
	if b, _ := os.ReadFile(img); len(bytes.Trim(b, "\x00")) != 0 {
		t.Error("the image changed")
	}

	// No removable disk at all: the same refusal, saying so.
	os.Remove(filepath.Join(diskList.Sys, "block", "sdb", "removable"))
	out, errs, code = runMain(t, "flash", "--port", "auto", "--json", img)
	if code != ExitUsage || !strings.Contains(errs, "no removable disk") || !strings.Contains(out, `"disks": []`) {
		t.Errorf("no disks: exit %d\n%s%s", code, out, errs)
	}
}

// kiln flash --port auto with firmware and no serial board attached: the
// error lists the removable disks as a hint (the user may have meant a
// card).
func TestFlashAutoNoBoardHintsDisks(t *testing.T) {
	diskList = fakeSysfs(t)
	defer func() { diskList = device.DiskListOptions{} }()
	hex := filepath.Join(t.TempDir(), "blink.hex")
	data := []byte{0x0c, 0x94, 0x5c, 0x00, 0x0c, 0x94, 0x6e, 0x00}
	sum := byte(len(data))
	for _, b := range data {
		sum += b
	}
	os.WriteFile(hex, []byte(fmt.Sprintf(":%02X000000%X%02X\n:00000001FF\n", len(data), data, -sum)), 0o644)
	out, errs, code := runMain(t, "flash", "--port", "auto", "--board", "arduino-uno", hex)
	if code == 0 || !strings.Contains(errs, "no serial board found; removable disks") || !strings.Contains(errs, diskList.Dev+"/sdb  31.9 GB") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
}

package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestInitramfsIsReproducibleAndCpioReadsIt(t *testing.T) {
	t.Parallel()
	need(t, "cpio")
	tr, src := testTree(t)
	tr.AddCharDevice("dev/console", 5, 1, 0o600)
	tr.AddSymlink("bin/sh", "busybox")
	var a, b bytes.Buffer
	if err := WriteInitramfs(&a, tr, 1700000000); err != nil {
		t.Fatal(err)
	}
	WriteInitramfs(&b, tr, 1700000000)
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two initramfs of the same tree differ")
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "gzip -dc | cpio -idmv --no-absolute-filenames --quiet 2>&1")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(a.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	sameTree(t, src, dir)
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("symlink: %q %v", l, err)
	}
	cmd = exec.Command("sh", "-c", "gzip -dc | cpio -itv --quiet")
	cmd.Stdin = bytes.NewReader(a.Bytes())
	list, _ := cmd.CombinedOutput()
	if !strings.Contains(string(list), "crw-------") || !strings.Contains(string(list), "5,") {
		t.Errorf("no /dev/console character device in:\n%s", list)
	}
}

// Package rpidebian_test builds and boots recipes/rpi-debian (issue 17): a
// package of its own, so its builds (minutes each on a fresh cache) have
// their own test timeout and run beside image/recipebuild's.
package rpidebian_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/image/recipebuild"
)

var work string

func TestMain(m *testing.M) {
	var err error
	work, err = os.MkdirTemp("", "kiln-rpi-debian-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(work)
	os.Exit(code)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func manifest(t *testing.T, dir string) *recipebuild.Result {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, recipebuild.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var r recipebuild.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func sum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// partition returns partition name of the image's layout, and
// "IMG@@OFFSET" for mtools.
func partition(t *testing.T, img string, m *recipebuild.Result, name string) (string, recipebuild.MetaPartition) {
	t.Helper()
	for _, p := range m.Metadata.Partitions {
		if p.Name == name {
			return fmt.Sprintf("%s@@%d", img, p.Start), p
		}
	}
	t.Fatalf("the image has no partition %s", name)
	return "", recipebuild.MetaPartition{}
}

func extract(t *testing.T, img string, p recipebuild.MetaPartition) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), p.Name)
	run(t, "dd", "if="+img, "of="+out, "bs=1M", fmt.Sprintf("skip=%d", p.Start), fmt.Sprintf("count=%d", p.Size),
		"status=none", "iflag=skip_bytes,count_bytes")
	return out
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

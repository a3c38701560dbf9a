package cli

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageBuildBadInputs runs kiln image build on broken image recipes:
// each fails with one "kiln:" line (and hints), exit 1, and leaves no output.
func TestImageBuildBadInputs(t *testing.T) {
	t.Parallel()
	const head = `name = "bad"
version = "1"
kind = "image"
board = "rpi-3b"
files = ["files/*"]
[image]
table = "mbr"
size = "64MiB"
source_date_epoch = 1
`
	random := make([]byte, 3<<20)
	rand.NewChaCha8([32]byte{3}).Read(random)
	cases := []struct {
		name, recipe string
		files        map[string][]byte
		want         string
	}{
		{"overlap", head + `[[image.partitions]]
name = "a"
fs = "fat32"
size = "40MiB"
[[image.partitions]]
name = "b"
fs = "raw"
start = "8MiB"
size = "4MiB"
`, nil, "partitions a and b overlap"},
		{"exceeds the disk", head + `[[image.partitions]]
name = "a"
fs = "raw"
size = "80MiB"
`, nil, "exceeds the disk"},
		{"missing file", head + `[[image.partitions]]
name = "a"
fs = "fat32"
size = "40MiB"
contents = [{ from = "src:files/nope.txt", to = "x" }]
`, map[string][]byte{"files/ok": []byte("x")}, "missing file"},
		{"name FAT cannot hold", head + `[[image.partitions]]
name = "a"
fs = "fat32"
size = "40MiB"
contents = [{ from = "src:files", to = "/" }]
`, map[string][]byte{"files/what?.txt": []byte("x")}, "name the filesystem cannot hold"},
		{"root does not fit its slot", head + `[[image.partitions]]
name = "root-a"
fs = "squashfs"
size = "2MiB"
contents = [{ from = "src:files", to = "/" }]
`, map[string][]byte{"files/blob": random}, "does not fit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(c.recipe), 0o644)
			for p, b := range c.files {
				os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
				os.WriteFile(filepath.Join(dir, p), b, 0o644)
			}
			parent := t.TempDir()
			out := filepath.Join(parent, "out")
			r := runKiln(t, nil, "image", "build", "--store", filepath.Join(t.TempDir(), "store"), "--out", out, dir)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code != 1 || !strings.HasPrefix(lines[0], "kiln: ") || !strings.Contains(lines[0], c.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and one kiln: line mentioning %q", r.code, r.stderr, c.want)
			}
			for _, l := range lines[1:] {
				if !strings.HasPrefix(l, "hint: ") {
					t.Errorf("extra stderr line %q", l)
				}
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("output left behind: %v", ents)
			}
		})
	}
}

package recipebuild

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/beneath"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// An input entry whose ./hostroot -> / (as a store filled before kiln
// rewrote such links would hold it) is refused as a subdir, and a content
// path through it is refused too: the image never holds a host file.
func TestInputSymlinkOutOfTheInput(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("KILN-SECRET"), 0o600)
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ subdir, from, want string }{
		{`subdir = "hostroot"`, "evil:etc/hostname", `input evil: subdir "hostroot" resolves outside the input (a symlink): refused`},
		{``, "evil:hostroot" + secret, "evil:hostroot" + secret + " resolves outside input evil (a symlink): refused"},
	} {
		rdir := filepath.Join(t.TempDir(), "r")
		os.MkdirAll(rdir, 0o755)
		recipe := `name = "hostroot"
version = "1"
kind = "image"
board = "rpi-3b"
[[inputs]]
name = "evil"
sources = ["file:nowhere.deb"]
sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
` + c.subdir + `
[image]
table = "mbr"
size = "4MiB"
source_date_epoch = 1751414400
[[image.partitions]]
name = "root"
fs = "squashfs"
size = "2MiB"
contents = [{ from = "` + c.from + `", to = "/k" }]
`
		os.WriteFile(filepath.Join(rdir, "recipe.toml"), []byte(recipe), 0o644)
		r, err := recipes.Load(rdir)
		if err != nil {
			t.Fatal(err)
		}
		in := r.Inputs[0]
		if _, err := st.Add(in.StoreKey(), in.Name, func(d string) error { return os.Symlink("/", filepath.Join(d, "hostroot")) }); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "out")
		_, err = Build(context.Background(), rdir, out, Options{Store: st, NoXZ: true})
		if !errors.Is(err, beneath.ErrEscapes) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("build: %v\nwant ErrEscapes and %q", err, c.want)
		}
		if _, err := os.Stat(filepath.Join(out, "image.img")); err == nil {
			t.Errorf("an image was written")
		}
	}
}

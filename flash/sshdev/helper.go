package sshdev

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/flash"
)

// helperCmd runs the helper with args. The helper lives in a directory
// only the SSH user can write (see installHelper), so no other local user
// can swap it between the hash check and the run; the check still runs
// first, every time. `sha256sum FILE` prints the hash first with GNU
// coreutils (Raspberry Pi OS) and with busybox alike.
func (d *device) helperCmd(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = quote(a)
	}
	return fmt.Sprintf("set -- $(sha256sum %[1]s) && [ \"$1\" = %[2]s ] && exec %[1]s %[3]s", quote(d.helper), d.hsum, strings.Join(q, " "))
}

// uploadScript makes a private directory (mktemp -d: a fresh random name,
// mode 0700), writes stdin into a new file there without following or
// replacing any name (noclobber, in a directory nobody else can enter),
// makes it executable and prints the directory.
const uploadScript = `set -eC
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/kiln-helper.XXXXXXXX")
cat > "$d/kiln-helper"
chmod 700 "$d/kiln-helper"
echo "$d"`

// goarchOf maps `uname -m` to Go's architecture names.
var goarchOf = map[string]string{"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}

// installHelper uploads the static helper for the device's architecture,
// if one exists in dir (files kiln-helper-<goarch>), into a private
// directory of its own. With no fitting helper, or one that does not run
// there (/tmp mounted noexec, a CPU without an instruction the build
// assumed), the device keeps using stock tools.
func (d *device) installHelper(ctx context.Context, dir string, log flash.Note) error {
	if dir == "" {
		return nil
	}
	m, err := d.output(ctx, "uname -m")
	if err != nil {
		return err
	}
	arch := goarchOf[strings.TrimSpace(m)]
	data, err := os.ReadFile(filepath.Join(dir, "kiln-helper-"+arch))
	if arch == "" || err != nil {
		return nil
	}
	sum := sha256.Sum256(data)
	var out bytes.Buffer
	if err := d.run(ctx, "sh -c "+quote(uploadScript), bytes.NewReader(data), &limitWriter{w: &out, n: 4096}); err != nil {
		return fmt.Errorf("upload helper: %w", err)
	}
	priv := strings.TrimSpace(out.String())
	if !strings.HasPrefix(priv, "/") || strings.ContainsAny(priv, "\n'") {
		return fmt.Errorf("upload helper: the device named its directory %q", priv)
	}
	d.dir, d.helper, d.hsum = priv, priv+"/kiln-helper", hex.EncodeToString(sum[:])
	res, err := d.output(ctx, d.helperCmd("sha256", "/dev/null", "0", "0"))
	if err != nil || !strings.HasPrefix(res, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") {
		log.Printf("helper for %s does not run on the device (%v); using the stock tools", arch, err)
		d.helper = ""
	}
	return nil
}

// removeHelper deletes the helper's private directory.
func (d *device) removeHelper(ctx context.Context) {
	if d.dir == "" {
		return
	}
	d.output(ctx, "rm -rf "+quote(d.dir))
	d.dir, d.helper = "", ""
}

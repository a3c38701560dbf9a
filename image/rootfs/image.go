package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
)

// Squashfs writes the root at dir as a squashfs image at out with
// mksquashfs, keeping owners, modes and set-id bits, every time set to
// epoch, entries in mksquashfs's sorted order: the same tree gives the
// same bytes.
func Squashfs(ctx context.Context, dir, out string, epoch int64) error {
	e := strconv.FormatInt(epoch, 10)
	cmd := exec.CommandContext(ctx, "mksquashfs", dir, out, "-noappend", "-no-progress", "-quiet",
		"-comp", "xz", "-all-time", e, "-mkfs-time", e, "-no-xattrs")
	// Not SOURCE_DATE_EPOCH as well: mksquashfs refuses both.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC", "LC_ALL=C"}
	var stderr bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rootfs: mksquashfs: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

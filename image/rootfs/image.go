package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Squashfs writes the root at dir as a squashfs image at out with
// mksquashfs, keeping owners, modes, set-id bits, device nodes, hard links
// and extended attributes (file capabilities a maintainer script set with
// setcap), every time set to epoch, entries in mksquashfs's sorted order:
// the same tree gives the same bytes. Labels the build host's security
// module put on the files (security.selinux, security.apparmor) are removed
// first: they describe the host, not the root.
func Squashfs(ctx context.Context, dir, out string, epoch int64) error {
	if err := dropHostLabels(dir); err != nil {
		return err
	}
	e := strconv.FormatInt(epoch, 10)
	cmd := exec.CommandContext(ctx, "mksquashfs", dir, out, "-noappend", "-no-progress", "-quiet",
		"-comp", "xz", "-all-time", e, "-mkfs-time", e, "-xattrs")
	// Not SOURCE_DATE_EPOCH as well: mksquashfs refuses both.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC", "LC_ALL=C"}
	var stderr bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rootfs: mksquashfs: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// hostLabels are extended attributes a build host sets on its own.
var hostLabels = []string{"security.selinux", "security.apparmor", "security.SMACK64"}

func dropHostLabels(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		for _, a := range hostLabels {
			if err := unix.Lremovexattr(p, a); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
				return fmt.Errorf("%s: remove %s: %w", p, a, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

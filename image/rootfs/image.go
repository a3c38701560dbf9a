package rootfs

import (
	"context"
	"fmt"

	"kiln.dev/kiln/image"
)

// Squashfs writes the root at dir as a squashfs image at out with
// image.MakeSquashfsDir (mksquashfs), keeping owners, modes, set-id bits,
// device nodes, hard links and extended attributes (file capabilities a
// maintainer script set with setcap), xz-compressed, every time set to
// epoch: the same tree gives the same bytes. Labels the build host's
// security module put on the files (security.selinux, security.apparmor)
// are removed first: they describe the host, not the root.
func Squashfs(ctx context.Context, dir, out string, epoch int64) error {
	err := image.MakeSquashfsDir(ctx, dir, out, image.SquashfsOptions{Epoch: epoch, Xattrs: true, Compression: "xz"})
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

package rootfs

import (
	"context"
	"fmt"

	"kiln.dev/kiln/image"
)

// DefaultCompression is a Debian root's squashfs compression when its
// partition names none: xz, the smallest (a root is hundreds of MB and
// travels to devices), where a recipe's own small trees default to
// image.DefaultSquashfsCompression.
const DefaultCompression = "xz"

// Squashfs writes the root at dir as a squashfs image at out with
// image.MakeSquashfsDir (mksquashfs), keeping owners, modes, set-id bits,
// device nodes, hard links and extended attributes (file capabilities a
// maintainer script set with setcap), compressed as compression says (""
// is DefaultCompression), every time set to
// epoch: the same tree gives the same bytes. Labels the build host's
// security module put on the files (security.selinux, security.apparmor)
// are removed first: they describe the host, not the root.
func Squashfs(ctx context.Context, dir, out string, epoch int64, compression string) error {
	if compression == "" {
		compression = DefaultCompression
	}
	err := image.MakeSquashfsDir(ctx, dir, out, image.SquashfsOptions{Epoch: epoch, Xattrs: true, Compression: compression})
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

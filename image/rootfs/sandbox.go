package rootfs

import (
	"context"
	"os/exec"
)

// SandboxCommand returns a command that runs script with /bin/sh in the
// sandbox Assemble uses: root of a new identity-mapped user namespace,
// new mount, PID, network, UTS and IPC namespaces, SOURCE_DATE_EPOCH set
// to epoch, and arch's emulator registered in the sandbox's own
// binfmt_misc. script sees args as $1, $2, …; when the sandbox cannot be
// made it exits non-zero with a line starting "kiln-sandbox:" on stderr.
// kiln's tests run mmdebstrap through it, so both roots are built under
// the same conditions. The error wraps ErrSandbox when arch cannot be
// emulated.
func SandboxCommand(ctx context.Context, arch string, epoch int64, script string, args ...string) (*exec.Cmd, error) {
	binfmt, err := binfmtFor(arch)
	if err != nil {
		return nil, err
	}
	return sandboxCmd(ctx, epoch, "BINFMT=$1\nshift\n"+binfmtScript+script, append([]string{binfmt}, args...)...), nil
}

package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrScript is returned (wrapped, with dpkg's output naming the package
// and the script) when a maintainer script fails.
var ErrScript = errors.New("maintainer script failed")

// ErrSandbox is returned (wrapped) when the build sandbox cannot be made:
// no user namespaces, or no binfmt_misc in them for a foreign architecture.
var ErrSandbox = errors.New("build sandbox unavailable")

// Deb is one package of the closure, in installation order.
type Deb struct {
	Name string
	Path string // the .deb file
	// Base: in the essential set's closure (lock.Package.Base), unpacked first
	// and installed with dpkg --force-depends, as mmdebstrap's essential phase.
	Base bool
}

// Options say what to assemble.
type Options struct {
	// Arch is the root's Debian architecture.
	Arch string
	// Debs is the closure in apt's order (the lock's order).
	Debs []Deb
	// Epoch is SOURCE_DATE_EPOCH: the clock maintainer scripts see for
	// reproducible output, and every file's modification time is clamped to it.
	Epoch int64
	// Log receives progress lines; may be nil.
	Log func(format string, args ...any)
}

// qemu is what binfmt_misc needs for each foreign architecture: the ELF
// header magic and mask (those Debian's qemu-user-static registers) and
// the static emulator.
var qemu = map[string]struct{ magic, mask, prog string }{
	"arm64": {`\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00`,
		`\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff`, "qemu-aarch64-static"},
	"armhf": {`\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00`,
		`\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff`, "qemu-arm-static"},
}

// hostArch is dpkg's name for the machine kiln runs on.
func hostArch() string {
	out, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// Assemble builds the root filesystem into dir, which must be empty. On
// error dir holds a partial tree the caller removes.
func Assemble(ctx context.Context, dir string, opts Options) error {
	if len(opts.Debs) == 0 {
		return fmt.Errorf("rootfs: no packages")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("rootfs: %w: assembling a root needs root (the sandbox maps every user and group ID 1:1, so files keep their owners)", ErrSandbox)
	}
	binfmt, err := binfmtFor(opts.Arch)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), ".rootfs-work-")
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.RemoveAll(work)
	var ess, rest []string
	var restDebs []Deb
	for i, d := range opts.Debs {
		// Debs are linked (or copied) in under their order, so the script
		// can pass them to dpkg in the lock's order.
		name := fmt.Sprintf("%04d-%s.deb", i, d.Name)
		if err := linkOrCopy(d.Path, filepath.Join(work, name)); err != nil {
			return fmt.Errorf("rootfs: %s: %w", d.Name, err)
		}
		if d.Base {
			ess = append(ess, name)
		} else {
			rest = append(rest, name)
			restDebs = append(restDebs, d)
		}
	}
	if len(ess) == 0 {
		return fmt.Errorf("rootfs: no package is marked base: nothing to unpack dpkg from")
	}
	batches, err := preDependBatches(ctx, restDebs, rest)
	if err != nil {
		return err
	}
	cmd := sandboxCmd(ctx, opts.Epoch, assembleScript, dir, work, binfmt, strings.Join(ess, " "), strings.Join(batches, "\n"), opts.Arch)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if opts.Log != nil {
		opts.Log("assemble %s root: %d essential + %d packages (dpkg under %s)", opts.Arch, len(ess), len(rest), emulation(binfmt))
	}
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("rootfs: %w", ctx.Err())
		}
		return scriptError(out.String(), err)
	}
	return nil
}

// binfmtFor is the binfmt_misc registration that runs arch's programs
// through qemu-user ("" for the host's own architecture).
func binfmtFor(arch string) (string, error) {
	if arch == hostArch() {
		return "", nil
	}
	q, ok := qemu[arch]
	if !ok {
		return "", fmt.Errorf("rootfs: %w: no emulator known for %s", ErrSandbox, arch)
	}
	prog, err := exec.LookPath(q.prog)
	if err != nil {
		return "", fmt.Errorf("rootfs: %w: %s (qemu-user-static) is needed for %s", ErrSandbox, q.prog, arch)
	}
	// F: the kernel opens the emulator now, so it runs inside any chroot.
	return fmt.Sprintf(":kiln-%s:M::%s:%s:%s:F", arch, q.magic, q.mask, prog), nil
}

// sandboxCmd runs script with sh as root of new user (identity-mapped:
// files keep their real owners, root and the system groups maintainer
// scripts create), mount, PID, network, UTS and IPC namespaces: no
// network, no host processes, mounts that vanish with it.
func sandboxCmd(ctx context.Context, epoch int64, script string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", script, "kiln-rootfs"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "LANG=C.UTF-8", "LANGUAGE=C.UTF-8",
		"TZ=UTC", "DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true",
		"SOURCE_DATE_EPOCH=" + strconv.FormatInt(epoch, 10), "HOME=/root"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID |
			syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 65536}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 65536}},
		GidMappingsEnableSetgroups: true,
		Pdeathsig:                  syscall.SIGKILL,
	}
	return cmd
}

// binfmtScript registers $BINFMT (if set) in the sandbox's own binfmt_misc.
const binfmtScript = `sandbox() { echo "kiln-sandbox: $*" >&2; exit 1; }
mount --make-rprivate / || sandbox "cannot make mounts private"
if [ -n "$BINFMT" ]; then
	mount -t binfmt_misc kiln-binfmt /proc/sys/fs/binfmt_misc 2>/dev/null ||
		sandbox "binfmt_misc cannot be mounted in a user namespace (Linux 6.7 or later is needed for a foreign architecture)"
	printf '%s' "$BINFMT" > /proc/sys/fs/binfmt_misc/register || sandbox "cannot register the emulator with binfmt_misc"
fi
`

func emulation(binfmt string) string {
	if binfmt == "" {
		return "the host CPU"
	}
	return "qemu-user"
}

// scriptError finds dpkg's account of a failed maintainer script.
func scriptError(out string, err error) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var why []string
	for i, l := range lines {
		if strings.Contains(l, "subprocess installed") || strings.Contains(l, "subprocess new pre-installation") ||
			strings.Contains(l, "script subprocess returned error") {
			// The script's own output is what dpkg printed before its complaint.
			start := max(0, i-6)
			why = append(why, strings.Join(lines[start:i+1], " | "))
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("rootfs: %w: %s", ErrScript, strings.Join(why, "; "))
	}
	if strings.Contains(out, "kiln-sandbox:") {
		for _, l := range lines {
			if strings.HasPrefix(l, "kiln-sandbox:") {
				return fmt.Errorf("rootfs: %w: %s", ErrSandbox, strings.TrimPrefix(l, "kiln-sandbox: "))
			}
		}
	}
	tail := lines[max(0, len(lines)-8):]
	return fmt.Errorf("rootfs: assembly failed (%v): %s", err, strings.Join(tail, " | "))
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// preDependBatches splits the packages after the essential set (names are
// their numbered file names, in the lock's order) where one pre-depends on
// a package earlier in the same batch: dpkg unpacks a package only when
// its pre-dependencies are configured, which happens between batches (as
// apt runs dpkg several times for the same reason).
func preDependBatches(ctx context.Context, debs []Deb, names []string) ([]string, error) {
	var batches []string
	var cur []string
	pending := map[string]bool{}
	for i, d := range debs {
		out, err := exec.CommandContext(ctx, "dpkg-deb", "-f", d.Path, "Pre-Depends").Output()
		if err != nil {
			return nil, fmt.Errorf("rootfs: %s: dpkg-deb -f: %w", d.Name, err)
		}
		split := false
		for _, alt := range strings.FieldsFunc(string(out), func(r rune) bool { return r == ',' || r == '|' }) {
			f := strings.Fields(alt)
			if len(f) == 0 {
				continue
			}
			name, _, _ := strings.Cut(f[0], ":")
			name, _, _ = strings.Cut(name, "(")
			if pending[name] {
				split = true
			}
		}
		if split && len(cur) > 0 {
			batches = append(batches, strings.Join(cur, " "))
			cur = nil
			pending = map[string]bool{}
		}
		cur = append(cur, names[i])
		pending[d.Name] = true
	}
	if len(cur) > 0 {
		batches = append(batches, strings.Join(cur, " "))
	}
	return batches, nil
}

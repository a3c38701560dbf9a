package firmware

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/beneath"
)

// ErrNoSandbox is returned when the kernel does not let kiln create the
// namespaces of the build sandbox. Building without one needs --no-sandbox
// (Options.NoSandbox) and is recorded in the manifest.
var ErrNoSandbox = errors.New("namespaces for the build sandbox are not allowed here")

// ErrCommand is returned when a command of the build (a compile, the archive,
// the link or a pre command) fails; the error carries the command's output.
var ErrCommand = errors.New("build command failed")

// sandboxArg0 is the argv[0] under which kiln re-executes itself to become the
// sandbox's first process. Any binary that links this package answers to it
// (see init), so the kiln binary and test binaries work alike.
const sandboxArg0 = "kiln-sandbox"

func init() {
	if len(os.Args) > 0 && os.Args[0] == sandboxArg0 {
		os.Exit(sandboxMain(os.Stdin, os.Stdout))
	}
}

// mount is one host path made visible inside the sandbox.
type mount struct {
	// Root, if set, is a directory Source is resolved beneath (relative,
	// never following a symlink out of Root: beneath.Open); else Source is
	// a host path kiln chose itself (the build tree, a host library).
	Root   string `json:"root,omitempty"`
	Source string `json:"source"` // host path (file or directory)
	Target string `json:"target"` // path inside the sandbox
	RW     bool   `json:"rw,omitempty"`
}

// command is one process the build runs, or a step: Go code of kiln's
// own (registered with registerStep) that runs in the sandbox like a
// command, for work that decides what to run as it goes (an Arduino
// sketch's library discovery).
type command struct {
	Argv []string `json:"argv,omitempty"`
	// What names the command in errors ("compile src/blink.cpp").
	What string          `json:"what"`
	Step string          `json:"step,omitempty"`
	Args json.RawMessage `json:"args,omitempty"`
}

// stepFunc runs a step with the plan's environment (in its Dir) and
// returns the output to report if it fails.
type stepFunc func(ctx context.Context, p *plan, args json.RawMessage) (string, error)

var steps = map[string]stepFunc{}

// registerStep makes a step available to plans; call it from init.
func registerStep(name string, f stepFunc) { steps[name] = f }

func asErr[T error](err error, target *T) bool { return errors.As(err, target) }

// plan is everything the sandbox's first process needs, sent as JSON on its
// stdin. Stages run one after another; the commands of a stage run in
// parallel, Jobs at a time.
type plan struct {
	Root   string      `json:"root"` // empty host directory that becomes "/"
	Mounts []mount     `json:"mounts"`
	Env    []string    `json:"env"`
	Dir    string      `json:"dir"`
	Jobs   int         `json:"jobs"`
	Stages [][]command `json:"stages"`
}

// report is what the sandbox answers on stdout.
type report struct {
	OK bool `json:"ok"`
	// Stages are the wall-clock durations of the stages that ran.
	Stages []time.Duration `json:"stages,omitempty"`
	Failed *command        `json:"failed,omitempty"`
	Output string          `json:"output,omitempty"`
	Error  string          `json:"error,omitempty"`
	// Denied is set when the kernel refused the sandbox's mounts (a
	// container that allows the namespaces but not mounting in them).
	Denied bool `json:"denied,omitempty"`
}

// CommandError is a failed build command with its output.
type CommandError struct {
	What   string
	Argv   []string
	Output string
	Err    string
	// Log is where the failed build's build.log was kept ("" if nowhere).
	Log string
}

func (e *CommandError) Error() string {
	msg := e.Err
	if line := firstErrorLine(e.Output); line != "" {
		msg += ": " + line
	}
	return fmt.Sprintf("%s: %s", e.What, msg)
}

func (e *CommandError) Unwrap() error { return ErrCommand }

// firstErrorLine picks the most telling line of a compiler's output.
func firstErrorLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		if strings.Contains(l, "error") || strings.Contains(l, "Error") {
			return strings.TrimSpace(l)
		}
	}
	if len(lines) > 0 {
		return strings.TrimSpace(lines[len(lines)-1])
	}
	return ""
}

// runSandboxed runs p in a new user, mount, network, PID, IPC and UTS
// namespace: a tmpfs root holding only p's mounts, no network but a loopback
// that is down, and p's environment alone.
func runSandboxed(ctx context.Context, p *plan) (*report, error) {
	in, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{sandboxArg0}
	cmd.Env = []string{}
	cmd.Stdin = bytes.NewReader(in)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
		Pdeathsig:                  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("firmware: %w: %v", ErrNoSandbox, err)
		}
		return nil, fmt.Errorf("firmware: start sandbox: %w", err)
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("firmware: sandbox: %v: %s", werr, strings.TrimSpace(errOut.String()))
	}
	return &r, r.err()
}

func (r *report) err() error {
	if r.OK {
		return nil
	}
	if r.Failed != nil {
		return &CommandError{What: r.Failed.What, Argv: r.Failed.Argv, Output: r.Output, Err: r.Error}
	}
	if r.Denied {
		return fmt.Errorf("firmware: %w: %s", ErrNoSandbox, r.Error)
	}
	return fmt.Errorf("firmware: sandbox: %s", r.Error)
}

// sandboxMain is the sandbox's first process: it builds the root file
// system, pivots into it and runs the plan.
func sandboxMain(stdin io.Reader, stdout io.Writer) int {
	var p plan
	r := report{}
	if err := json.NewDecoder(stdin).Decode(&p); err != nil {
		r.Error = "read plan: " + err.Error()
	} else if err := enterRoot(&p); err != nil {
		r.Error = err.Error()
		r.Denied = errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
	} else {
		r = runPlan(context.Background(), &p)
	}
	_ = json.NewEncoder(stdout).Encode(&r)
	return 0
}

// enterRoot makes p.Root a tmpfs holding p's mounts, a /tmp and /dev/null,
// and pivots into it.
func enterRoot(p *plan) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := p.Root
	if err := unix.Mount("kiln", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount root tmpfs: %w", err)
	}
	mounts := append([]mount{{Source: "/dev/null", Target: "/dev/null", RW: true}}, p.Mounts...)
	for _, m := range mounts {
		if err := bindMount(root, m); err != nil {
			return err
		}
	}
	for _, d := range []string{"/tmp", "/homeless", "/proc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("kiln", filepath.Join(root, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	// A fresh /proc for the new PID namespace; compilers do not need it, so
	// a kernel that refuses it (a masked /proc in a container) is no error.
	_ = unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	// The root itself becomes read-only: only /build (and /tmp) take writes.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("remount root read-only: %w", err)
	}
	return nil
}

// bindMount mounts m.Source at root+m.Target, read-only unless m.RW. A
// source with a Root is opened beneath it (O_PATH) and the mount made from
// that descriptor, so no symlink swapped in after the check is followed.
// Binds are not recursive: a mount below the source (another file system,
// /dev/shm, a socket directory) is not carried into the sandbox; and the
// read-only flag is set on the whole tree mounted (mount_setattr with
// AT_RECURSIVE) where the kernel has it.
func bindMount(root string, m mount) error {
	src := m.Source
	if m.Root != "" {
		f, err := beneath.Open(m.Root, m.Source, unix.O_PATH)
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
		defer f.Close()
		src = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.Target, err)
	}
	dst := filepath.Join(root, m.Target)
	if st.IsDir() {
		err = os.MkdirAll(dst, 0o755)
	} else {
		if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				err = f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.Target, err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", m.Source, m.Target, err)
	}
	if m.RW {
		return nil
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	err = unix.MountSetattr(-1, dst, unix.AT_RECURSIVE, attr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("make %s read-only: %w", m.Target, err)
	}
	// Before Linux 5.12: a read-only remount, which inside a user
	// namespace must keep the flags the source mount is locked with.
	var sfs unix.Statfs_t
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	if unix.Statfs(dst, &sfs) == nil {
		for _, f := range [][2]uintptr{{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV},
			{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME},
			{unix.ST_RELATIME, unix.MS_RELATIME}} {
			if uintptr(sfs.Flags)&f[0] != 0 {
				flags |= f[1]
			}
		}
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", m.Target, err)
	}
	return nil
}

// runPlan runs the plan's stages in p.Dir with p.Env (and nothing else).
func runPlan(ctx context.Context, p *plan) report {
	jobs := p.Jobs
	if jobs < 1 {
		jobs = 1
	}
	var took []time.Duration
	for _, stage := range p.Stages {
		t := time.Now()
		r := runStage(ctx, p, stage, jobs)
		took = append(took, time.Since(t))
		if !r.OK {
			r.Stages = took
			return r
		}
	}
	return report{OK: true, Stages: took}
}

func runStage(ctx context.Context, p *plan, stage []command, jobs int) report {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		fails []report
		wg    sync.WaitGroup
		work  = make(chan int)
	)
	for w := 0; w < jobs && w < len(stage); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c := stage[i]
				if r := runCommand(ctx, p, c); !r.OK {
					mu.Lock()
					r.Failed = &stage[i]
					fails = append(fails, r)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range stage {
		mu.Lock()
		failed := len(fails) > 0
		mu.Unlock()
		if failed {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if len(fails) == 0 {
		return report{OK: true}
	}
	// Report the first command of the stage that failed, whatever order
	// the workers finished in.
	sort.Slice(fails, func(i, j int) bool { return fails[i].Failed.What < fails[j].Failed.What })
	return fails[0]
}

func runCommand(ctx context.Context, p *plan, c command) report {
	if c.Step != "" {
		f := steps[c.Step]
		if f == nil {
			return report{Error: "unknown step " + c.Step}
		}
		if out, err := f(ctx, p, c.Args); err != nil {
			return report{Error: err.Error(), Output: out}
		}
		return report{OK: true}
	}
	if len(c.Argv) == 0 {
		return report{Error: "empty command"}
	}
	path := c.Argv[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = lookPath(path, p.Env); err != nil {
			return report{Error: err.Error()}
		}
	}
	cmd := exec.CommandContext(ctx, path, c.Argv[1:]...)
	cmd.Args[0] = c.Argv[0]
	cmd.Env = p.Env
	cmd.Dir = p.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return report{Error: err.Error(), Output: out.String()}
	}
	return report{OK: true}
}

// lookPath finds name in the PATH of env (never the caller's PATH).
func lookPath(name string, env []string) (string, error) {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, dir := range filepath.SplitList(v) {
				p := filepath.Join(dir, name)
				if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
					return p, nil
				}
			}
		}
	}
	return "", fmt.Errorf("%s: not found in the toolchain's PATH", name)
}

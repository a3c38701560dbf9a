package fetch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// aptStates are the private apt state directories made in this process, by
// directory: one apt-get update per architecture and store.
var aptStates sync.Map // dir → *aptState

type aptState struct {
	once sync.Once
	err  error
}

// debArch handles "deb:NAME:ARCH=VERSION" for an architecture other than
// the host's (arm64 kernels for Raspberry Pi images on an amd64 host): apt
// gets its own state and cache directory under the store root, configured
// for ARCH alone, which is updated once from the host's sources.list and
// then used for apt-get download. The host's dpkg and apt state are never
// touched. It returns the extra apt-get options and the NAME=VERSION spec.
// For a plain NAME=VERSION (or the host's own architecture) it returns no
// options and the spec unchanged.
func (f *Fetcher) debArch(ctx context.Context, spec string) ([]string, string, error) {
	nameArch, ver, _ := strings.Cut(spec, "=")
	name, arch, ok := strings.Cut(nameArch, ":")
	if !ok {
		return nil, spec, nil
	}
	if host, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil && strings.TrimSpace(string(host)) == arch {
		return nil, spec, nil
	}
	apt := f.APTGet
	if apt == "" {
		apt = "apt-get"
	}
	dir := filepath.Join(f.Store.Root, ".apt-"+arch)
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, "", err
		}
	}
	status := filepath.Join(dir, "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return nil, "", err
		}
	}
	opts := []string{
		"-o", "Dir::State=" + dir, "-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
		"-o", "Dir::State::status=" + status, "-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "APT::Architecture=" + arch, "-o", "APT::Architectures::=" + arch,
		"-o", "Debug::NoLocking=1",
	}
	if os.Geteuid() == 0 {
		opts = append(opts, "-o", "APT::Sandbox::User=root")
	}
	v, _ := aptStates.LoadOrStore(dir, &aptState{})
	st := v.(*aptState)
	st.once.Do(func() {
		f.logf("apt-get update for %s (private state %s)", arch, dir)
		cmd := exec.CommandContext(ctx, apt, append(append([]string{}, opts...), "-q", "update")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			st.err = fmt.Errorf("%w: apt-get update for %s (%v): %s", ErrAPT, arch, err, lastLine(string(out)))
		}
	})
	if st.err != nil {
		return nil, "", st.err
	}
	return opts, name + "=" + ver, nil
}

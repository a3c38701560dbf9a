package fetch

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// xzProcess decompresses an .xz stream with the system's xz (xz-utils, a
// pinned host tool of kiln's) in a process of its own: liblzma decodes a
// .deb's data.tar.xz about twice as fast as ulikunitz/xz, and on a core
// beside the one writing the files, as dpkg-deb's decompressor runs beside
// its tar. Its output is read like any reader; at the end of it, xz's exit
// status says whether the stream was whole (its integrity check
// included): a failure is ErrBadArchive, never a quiet end of the tar.
type xzProcess struct {
	cmd    *exec.Cmd
	out    int // read end of xz's stdout, a plain blocking descriptor
	stderr bytes.Buffer
	err    error // set once xz has been waited for
	waited bool
}

// xzPipeSize is the pipe xz writes into: room for xz to run ahead of the
// files being written (a pipe holds 64 KiB unless asked).
const xzPipeSize = 1 << 20

// startXZ starts xz -dc reading r; ok is false when there is no xz to
// run (the caller decodes in Go instead).
func startXZ(r io.Reader) (x *xzProcess, ok bool) {
	bin, err := exec.LookPath("xz")
	if err != nil {
		return nil, false
	}
	// The read end stays out of the runtime's poller: this reader is the
	// only one waiting on it, and a blocking read is one system call where
	// the poller makes three.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, false
	}
	unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, xzPipeSize) // a smaller pipe only costs speed
	w := os.NewFile(uintptr(p[1]), "xz stdout")
	x = &xzProcess{cmd: exec.Command(bin, "--decompress", "--stdout", "--quiet", "--no-warn"), out: p[0]}
	// Nothing of the environment (XZ_DEFAULTS, XZ_OPT) changes how it reads.
	x.cmd.Env = []string{"LC_ALL=C"}
	x.cmd.Stdin, x.cmd.Stdout, x.cmd.Stderr = r, w, &x.stderr
	err = x.cmd.Start()
	w.Close() // xz holds its own copy: its exit ends the stream
	if err != nil {
		unix.Close(p[0])
		return nil, false
	}
	return x, true
}

func (x *xzProcess) Read(p []byte) (int, error) {
	if x.waited {
		return 0, x.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(x.out, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, fmt.Errorf("xz: read: %w", err)
		case n == 0:
			x.wait()
			return 0, x.err
		}
		return n, nil
	}
}

func (x *xzProcess) wait() {
	x.waited = true
	x.err = io.EOF
	unix.Close(x.out)
	if err := x.cmd.Wait(); err != nil {
		msg := strings.TrimSpace(x.stderr.String())
		if len(msg) > 200 {
			msg = msg[:200]
		}
		x.err = fmt.Errorf("%w: xz: %v: %s", ErrBadArchive, err, msg)
	}
}

// Close stops xz if it is still running and waits for it.
func (x *xzProcess) Close() {
	if !x.waited {
		x.cmd.Process.Kill()
		x.wait()
	}
}

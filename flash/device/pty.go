package device

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ServePTY serves emu on the master side of a pseudo-terminal, each time a
// program opens the other end; each session starts the emulated board afresh
// in its bootloader (a pty has no DTR: the open is the reset). It returns
// when ctx ends.
func ServePTY(ctx context.Context, ptmx *os.File, emu Emulator) error {
	fd := int(ptmx.Fd())
	for {
		// Wait for a program to open the port.
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, 50); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("device: pty: poll: %w", err)
			}
			if fds[0].Revents&unix.POLLHUP == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond) // POLLHUP is level-triggered: poll would spin
		}
		if r, ok := emu.(Resetter); ok {
			r.Reset()
		}
		conn := &ptyConn{fd: fd, ctx: ctx}
		if err := emu.Serve(ctx, conn); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
}

// ptyConn reads and writes the pty master; Read returns io.EOF when the
// program on the other end closes the port.
type ptyConn struct {
	fd  int
	ctx context.Context
}

func (p *ptyConn) Read(b []byte) (int, error) {
	for {
		if err := p.ctx.Err(); err != nil {
			return 0, err
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 50); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return 0, err
		}
		switch {
		case fds[0].Revents&unix.POLLIN != 0:
			n, err := unix.Read(p.fd, b)
			if errors.Is(err, unix.EIO) {
				return 0, io.EOF
			}
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return 0, err
			}
			return n, nil
		case fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0:
			return 0, io.EOF
		}
	}
}

func (p *ptyConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(p.fd, b[n:])
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

package sshdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/image/disk"
)

// session is what the connections of one update share.
type session struct {
	mu     sync.Mutex
	sent   int64 // by closed connections
	helper bool
}

// shellDevice is ab.Device over one SSH connection, with the device's
// stock tools (dd, sha256sum, sh) or, for writes, kiln's helper.
type shellDevice struct {
	c    ssh.RunCloser
	d    *device
	opts *UpdateOptions
	boot bootControl
	rem  *remote // what the last Inspect found
	s    *session
	once sync.Once
}

var _ ab.Device = (*shellDevice)(nil)
var _ ab.Stats = (*shellDevice)(nil)

// abDialer adapts dial to the state machine: every connection of the
// update shares s and arms and commits through boot.
func abDialer(dial ssh.Dialer, opts *UpdateOptions, boot bootControl, s *session, wrap func(ab.Device) ab.Device) ab.Dialer {
	return func(ctx context.Context) (ab.Device, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, connErr(err)
		}
		var d ab.Device = &shellDevice{c: c, d: &device{r: c}, opts: opts, boot: boot, s: s}
		if wrap != nil {
			d = wrap(d)
		}
		return d, nil
	}
}

// connErr marks a lost connection for the state machine.
func connErr(err error) error {
	if errors.Is(err, ssh.ErrConnLost) && !errors.Is(err, ab.ErrConnLost) {
		return fmt.Errorf("%w (%w)", err, ab.ErrConnLost)
	}
	return err
}

func (s *shellDevice) Inspect(ctx context.Context) (*ab.State, error) {
	rem, err := inspect(ctx, s.d, s.opts.Disk, s.boot)
	if err != nil {
		return nil, connErr(err)
	}
	s.rem = rem
	return &ab.State{Table: rem.tbl, Layout: rem.layout, Committed: rem.committed, Running: rem.running, BootID: rem.bootID, Uptime: rem.uptime}, nil
}

func (s *shellDevice) Lock(ctx context.Context, owner string) error {
	return connErr(s.d.lock(ctx, owner))
}

func (s *shellDevice) Unlock(ctx context.Context, owner string) { s.d.unlock(ctx, owner) }

func (s *shellDevice) WriteVerified(ctx context.Context, part disk.Partition, src io.ReaderAt, n int64, phase string) (string, error) {
	var err error
	s.once.Do(func() {
		// The helper lives in a private directory of this connection.
		err = s.d.installHelper(ctx, s.opts.HelperDir, s.opts.Log)
		s.s.mu.Lock()
		s.s.helper = s.s.helper || s.d.helper != ""
		s.s.mu.Unlock()
	})
	if err != nil {
		return "", connErr(err)
	}
	sum, err := writeVerified(ctx, s.d, partDev(s.opts.Disk, part.Number), src, n, phase, *s.opts)
	return sum, connErr(err)
}

func (s *shellDevice) ArmTrial(ctx context.Context, committed, trial disk.Slot) error {
	return connErr(s.boot.arm(ctx, s.rem, committed, trial))
}

func (s *shellDevice) Commit(ctx context.Context, slot, previous disk.Slot) error {
	return connErr(s.boot.commit(ctx, s.rem, slot, previous))
}

func (s *shellDevice) Reboot(ctx context.Context, trial bool) error {
	if d, ok := s.boot.(disarmer); ok && !trial {
		if s.rem == nil {
			return fmt.Errorf("reboot: the device was not inspected on this connection")
		}
		if err := d.disarm(ctx, s.rem); err != nil {
			return connErr(err)
		}
	}
	s.d.removeHelper(ctx) // the writes are done; the connection ends with the reboot
	return connErr(s.c.Run(ctx, s.boot.rebootCmd(trial), nil, nil))
}

func (s *shellDevice) Health(ctx context.Context, cmd string) error {
	return connErr(s.c.Run(ctx, cmd, nil, io.Discard))
}

func (s *shellDevice) Sent() int64 {
	s.s.mu.Lock()
	defer s.s.mu.Unlock()
	return s.s.sent + s.d.sent.Load()
}

func (s *shellDevice) UsedHelper() bool {
	s.s.mu.Lock()
	defer s.s.mu.Unlock()
	return s.s.helper
}

func (s *shellDevice) Close() error {
	if s.d.dir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.d.removeHelper(ctx)
		cancel()
	}
	s.s.mu.Lock()
	s.s.sent += s.d.sent.Swap(0)
	s.s.mu.Unlock()
	return s.c.Close()
}

package device

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/blockdev"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/sshdev"
)

// DiskOptions tune opening a whole-disk back end.
type DiskOptions struct {
	// SSH says how to authenticate (host keys are always checked; no
	// passwords).
	SSH ssh.Options
	// Dialer replaces the real SSH dialer (tests).
	Dialer func(a ssh.Addr, opts ssh.Options) ssh.Dialer
	// Force writes a local block device that does not say it is removable.
	Force bool
}

// ErrBadPort means a port spec cannot name a device of its back end.
var ErrBadPort = errors.New("bad port")

// DiskBackend returns the whole-disk back end whose port prefix port
// carries, with the port checked; nil (and no error) when port is not a
// disk's.
func DiskBackend(port string) (*Backend, error) {
	be := byPort(port)
	if be == nil || be.OpenDisk == nil {
		return nil, nil
	}
	if be.CheckPort != nil {
		if err := be.CheckPort(port); err != nil {
			return nil, err
		}
	}
	return be, nil
}

func checkSSHDisk(port string) error {
	a, err := ssh.ParseAddr(port)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadPort, err)
	}
	if !strings.HasPrefix(a.Path, "/dev/") {
		return fmt.Errorf("%w: flash --port %s: name the block device, e.g. ssh://root@host/dev/sdb (for A/B updates use kiln update)", ErrBadPort, port)
	}
	return nil
}

func openSSHDisk(ctx context.Context, port string, opts DiskOptions) (flash.DiskTarget, string, error) {
	if err := checkSSHDisk(port); err != nil {
		return nil, "", err
	}
	a, _ := ssh.ParseAddr(port)
	dial := ssh.DialerFor(a, opts.SSH)
	if opts.Dialer != nil {
		dial = opts.Dialer(a, opts.SSH)
	}
	d, err := sshdev.OpenDisk(ctx, dial, a.Path)
	if err != nil {
		return nil, "", err
	}
	return d, a.Host, nil
}

func openBlockDisk(ctx context.Context, port string, opts DiskOptions) (flash.DiskTarget, string, error) {
	d, err := blockdev.Open(strings.TrimPrefix(port, "blockdev:"), blockdev.Options{Force: opts.Force})
	if err != nil {
		return nil, "", err
	}
	return d, d.Path(), nil
}

// LocalDisk is a whole disk of this machine as ListDisks shows it
// (blockdev.Disk).
type LocalDisk = blockdev.Disk

// DiskListOptions say where ListDisks looks (blockdev.ListOptions).
type DiskListOptions = blockdev.ListOptions

// ListDisks lists this machine's removable disks (all with opts.All), for
// a user choosing the card an image goes to.
func ListDisks(opts DiskListOptions) ([]LocalDisk, error) { return blockdev.List(opts) }

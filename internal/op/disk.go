package op

import (
	"context"
	"fmt"
	"os"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/internal/trust"
)

// DiskOptions tune writes of whole disk images over SSH.
type DiskOptions struct {
	// KnownHosts and KeyFiles: see ssh.Options (host keys are always
	// checked; no passwords).
	KnownHosts string
	KeyFiles   []string
	// Update tunes an A/B update (health check, timeouts, delta, helper).
	Update sshdev.UpdateOptions
	// Force writes a local block device that does not say it is removable.
	Force bool
	// Dialer replaces the real SSH dialer (tests).
	Dialer func(a ssh.Addr, opts ssh.Options) ssh.Dialer
}

func (o DiskOptions) device() device.DiskOptions {
	return device.DiskOptions{SSH: o.sshOptions(), Dialer: o.Dialer, Force: o.Force}
}

func (o DiskOptions) sshOptions() ssh.Options {
	return ssh.Options{KnownHosts: o.KnownHosts, KeyFiles: o.KeyFiles, Timeout: 10 * time.Second}
}

func (o DiskOptions) dialer(a ssh.Addr) ssh.Dialer {
	opts := o.sshOptions()
	if o.Dialer != nil {
		return o.Dialer(a, opts)
	}
	return ssh.DialerFor(a, opts)
}

// UpdateOptions tune an A/B update (sshdev.UpdateOptions).
type UpdateOptions = sshdev.UpdateOptions

// SlotCheck is what CheckSlot found (sshdev.SlotCheck).
type SlotCheck = sshdev.SlotCheck

// SlotPort checks, before any rebuild, that port can name a device for
// CheckSlot (ssh://user@host[/dev/DISK]); ErrUsage if not.
func SlotPort(port string) error {
	if _, err := ssh.ParseAddr(port); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return nil
}

// CheckSlot hashes the slot the device at port runs, on the device, and
// compares it with the image at rebuilt as an update would write it
// (kiln audit IMAGE_RECIPE --port ssh://...).
func CheckSlot(ctx context.Context, port string, o DiskOptions, rebuilt string) (*SlotCheck, string, error) {
	a, err := ssh.ParseAddr(port)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrUsage, err)
	}
	chk, err := sshdev.Check(ctx, o.dialer(a), a.Host, a.Path, rebuilt)
	return chk, a.Host, err
}

// diskBoard resolves the board of a disk write: the one named (which must
// be the image's, when the image says), else the image's; "" when neither
// says (the trust gate then fails closed).
func diskBoard(name string, a *Artifact) (string, error) {
	if name == "" {
		return a.Board, nil
	}
	b, err := boards.Get(name)
	if err != nil {
		return "", err
	}
	if err := CheckBoard(a, b); err != nil {
		return "", err
	}
	return b.Name, nil
}

// diskArtifact is load → board check → trust gate for both disk
// operations: the image's private copy, the report filled from it.
func diskArtifact(req Request, rep *Report) (*Artifact, error) {
	a, err := LoadDisk(req.Artifact, req.Load)
	if err != nil {
		return nil, err
	}
	rep.Image, rep.ArtifactSHA256, rep.ImageSHA256, rep.Bytes, rep.Derivation = a.Path, a.SHA256, a.DiskSHA256, a.DiskSize, a.Derivation
	if rep.Board, err = diskBoard(req.Board, a); err == nil {
		rep.Trust, err = Trust(req.Policy, a, trust.Target{Board: rep.Board, Group: req.Group, Port: req.Port})
	}
	if err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// FlashDisk writes a whole disk image to the disk the port names, through
// its back end's flash.DiskTarget (a block device of this machine, or one
// on a device reached over SSH), from the artifact's private copy, and
// proves it with the device's own hash of the written ranges.
func FlashDisk(ctx context.Context, req Request) (rep *Report, err error) {
	start := time.Now()
	rep = &Report{Op: "flash", Port: req.Port, Image: req.Artifact}
	be, err := device.DiskBackend(req.Port)
	if err == nil && be == nil {
		err = fmt.Errorf("%w: %s names no disk", device.ErrBadPort, req.Port)
	}
	if err != nil {
		return rep, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	rep.Protocol = be.Protocol
	defer func() { err = record(req, rep, err) }()
	a, err := diskArtifact(req, rep)
	if err != nil {
		return rep, err
	}
	defer a.Close()
	f, err := os.Open(a.DiskPath())
	if err != nil {
		return rep, err
	}
	defer f.Close()
	t, name, err := be.OpenDisk(ctx, req.Port, req.Disk.device())
	if err != nil {
		return rep, err
	}
	defer t.Close()
	rep.Device = name
	res, err := flash.WriteDisk(ctx, t, f, a.DiskSize, a.Bmap, req.Progress)
	rep.Disk, rep.DeviceSHA256 = res, res.DeviceSHA256
	rep.Verified = res.Verified && err == nil
	rep.WriteSec, rep.VerifySec = res.WriteSec, res.VerifySec
	rep.TotalSec = time.Since(start).Seconds()
	return rep, err
}

// Update is an A/B update over SSH: the image's board (kiln.json) must be
// the one the device runs (and the one named, when one is), the trust
// gate passes on the image's own bytes, and the update writes from the
// private copy.
func Update(ctx context.Context, req Request) (rep *Report, err error) {
	start := time.Now()
	rep = &Report{Op: "update", Port: req.Port, Protocol: "ssh", Image: req.Artifact}
	addr, err := ssh.ParseAddr(req.Port)
	if err != nil {
		return rep, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	defer func() { err = record(req, rep, err) }()
	a, err := diskArtifact(req, rep)
	if err != nil {
		return rep, err
	}
	defer a.Close()
	if err := checkAB(a, rep.Board); err != nil {
		return rep, err
	}
	dial := req.Disk.dialer(addr)
	opts := req.Disk.Update
	opts.Disk = addr.Path
	if opts.Progress == nil {
		opts.Progress = req.Progress
	}
	if opts.Log == nil && req.Note != nil {
		opts.Log = req.Note
	}
	// The device's board (its running slot's kiln.json) against the
	// image's, before a byte goes out.
	if rep.Board != "" {
		st, err := sshdev.Inspect(ctx, dial, addr.Host, opts.Disk)
		if err != nil {
			return rep, err
		}
		if st.Board != "" && st.Board != rep.Board {
			return rep, fmt.Errorf("%w: %s is an image for %s, but %s runs an image for %s", ErrWrongBoard, a.Path, rep.Board, addr.Host, st.Board)
		}
	}
	res, err := sshdev.Update(ctx, dial, addr.Host, a.DiskPath(), opts)
	if res != nil {
		rep.Device, rep.Derivation, rep.DeviceSHA256, rep.Update = res.Device, res.Derivation, res.RootSHA256, res
		rep.Verified = res.Committed && err == nil
		rep.WriteSec = res.WriteSec
	}
	rep.TotalSec = time.Since(start).Seconds()
	return rep, err
}

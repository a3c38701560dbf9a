package op

import (
	"context"
	"fmt"
	"strings"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/blockdev"
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

func (o DiskOptions) dialer(a ssh.Addr) ssh.Dialer {
	opts := ssh.Options{KnownHosts: o.KnownHosts, KeyFiles: o.KeyFiles, Timeout: 10 * time.Second}
	if o.Dialer != nil {
		return o.Dialer(a, opts)
	}
	return ssh.DialerFor(a, opts)
}

// UpdateOptions tune an A/B update (sshdev.UpdateOptions).
type UpdateOptions = sshdev.UpdateOptions

// SlotCheck is what CheckSlot found (sshdev.SlotCheck).
type SlotCheck = sshdev.SlotCheck

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

// FlashDisk writes a whole disk image to the block device an ssh:// port
// names, from the artifact's private copy, and proves it with the
// device's own hash.
func FlashDisk(ctx context.Context, req Request) (rep *Report, err error) {
	start := time.Now()
	rep = &Report{Op: "flash", Port: req.Port, Protocol: "ssh", Image: req.Artifact}
	addr, err := ssh.ParseAddr(req.Port)
	if err != nil {
		return rep, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if !strings.HasPrefix(addr.Path, "/dev/") {
		return rep, fmt.Errorf("%w: flash --port %s: name the block device, e.g. ssh://root@host/dev/sdb (for A/B updates use kiln update)", ErrUsage, req.Port)
	}
	defer func() { err = record(req, rep, err) }()
	a, err := diskArtifact(req, rep)
	if err != nil {
		return rep, err
	}
	defer a.Close()
	c, err := req.Disk.dialer(addr)(ctx)
	if err != nil {
		return rep, err
	}
	defer c.Close()
	var prog func(done, total int64)
	if req.Progress != nil {
		prog = func(d, t int64) { req.Progress("write", d, t) }
	}
	res, err := sshdev.WriteDevice(ctx, c, addr.Path, a.DiskPath(), a.Bmap, prog)
	if res != nil {
		rep.Device, rep.DeviceSHA256, rep.Disk = res.Device, res.DeviceSHA256, res
		if rep.Device == "" {
			rep.Device = addr.Host
		}
		rep.Verified = res.Verified && err == nil
		rep.WriteSec = res.Seconds
	}
	rep.TotalSec = time.Since(start).Seconds()
	return rep, err
}

// FlashLocal writes a whole disk image to a block device of this machine
// (an SD card in a reader: /dev/sdX, blockdev:/dev/disk/by-id/...) and
// proves it by reading it back past the cache.
func FlashLocal(ctx context.Context, req Request) (rep *Report, err error) {
	start := time.Now()
	rep = &Report{Op: "flash", Port: req.Port, Protocol: "blockdev", Image: req.Artifact}
	path := strings.TrimPrefix(req.Port, "blockdev:")
	defer func() { err = record(req, rep, err) }()
	a, err := diskArtifact(req, rep)
	if err != nil {
		return rep, err
	}
	defer a.Close()
	var prog func(string, int64, int64)
	if req.Progress != nil {
		prog = func(phase string, d, t int64) { req.Progress(phase, d, t) }
	}
	res, err := blockdev.Write(ctx, path, a.DiskPath(), blockdev.Options{Bmap: a.Bmap, Force: req.Disk.Force, Progress: prog})
	if res != nil {
		rep.Device, rep.DeviceSHA256, rep.Local = res.Path, res.ReadbackSHA256, res
		rep.Verified = res.Verified && err == nil
		rep.WriteSec, rep.VerifySec = res.WriteSec, res.VerifySec
	}
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

package sshdev

import (
	"context"
	"fmt"
	"os"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/image/disk"
)

// UpdateOptions tunes an A/B update.
type UpdateOptions struct {
	Disk          string        // the device's disk; default /dev/mmcblk0
	Health        string        // health check command run on the new slot; default "true"
	HealthTimeout time.Duration // default 60s
	BootTimeout   time.Duration // how long a reboot may take; default 120s
	TrialGrace    time.Duration // an unlocked trial boot younger than this is left alone (ErrBusy); default 2 min
	NoDelta       bool          // always send whole partitions
	BlockSize     int64         // delta block size; default 4 KiB with the helper, 1 MiB with stock tools
	HelperDir     string        // where kiln-helper-<goarch> files are; "" for stock tools only
	Log           flash.Note
	Progress      flash.Progress // phases "root" and "boot": bytes of the slot compared or written
}

// Layout is an image's kiln.json (disk.Metadata).
type Layout = disk.Metadata

// UpdateResult is what an update did.
type UpdateResult = ab.Result

var (
	// ErrRolledBack means the new slot failed its trial boot or health check
	// and the device is back on its committed slot.
	ErrRolledBack = ab.ErrRolledBack
	// ErrLayout means the device or the image has no usable A/B layout.
	ErrLayout = disk.ErrLayout
	// ErrBusy means another update holds the device's update lock.
	ErrBusy = ab.ErrBusy
	// ErrCommitUnknown means the commit was sent but the device could not be
	// reached to see whether it landed.
	ErrCommitUnknown = ab.ErrCommitUnknown
)

// partDev names partition n of disk (/dev/mmcblk0 → /dev/mmcblk0p2, /dev/sda → /dev/sda2).
func partDev(disk string, n int) string {
	if c := disk[len(disk)-1]; c >= '0' && c <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

func (o *UpdateOptions) defaults() {
	if o.Disk == "" {
		o.Disk = "/dev/mmcblk0"
	}
}

// openImage opens an A/B image file and reads its layout.
func openImage(path string) (*os.File, *ab.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err == nil {
		var img *ab.Image
		if img, err = ab.ReadImage(path, f, st.Size()); err == nil {
			if _, err = bootFor(img.Layout.AB); err == nil {
				return f, img, nil
			}
			err = fmt.Errorf("%s: %w", path, err)
		}
	}
	f.Close()
	return nil, nil, err
}

// Update installs the image at path (an .img with kiln's A/B layout) on the
// device's inactive slot through the A/B state machine (flash/ab): the slot
// is written and hashed on the device, trial-booted by the mechanism the
// image's kiln.json names (the Raspberry Pi firmware's tryboot, or U-Boot's
// uboot.env with a boot counter), health-checked and committed — or rolled
// back.
// It returns ErrRolledBack (wrapped) when the device ended on its old slot.
func Update(ctx context.Context, dial ssh.Dialer, name, path string, opts UpdateOptions) (*UpdateResult, error) {
	f, img, err := openImage(path)
	if err != nil {
		return &UpdateResult{Device: name}, err
	}
	defer f.Close()
	return UpdateImage(ctx, dial, name, img, opts)
}

// UpdateImage is Update of an image already opened (ab.ReadImage): the
// caller that hashed and checked the artifact hands over the same handle.
func UpdateImage(ctx context.Context, dial ssh.Dialer, name string, img *ab.Image, opts UpdateOptions) (*UpdateResult, error) {
	return updateImage(ctx, dial, name, img, opts, nil)
}

// StageImage writes img to the device's inactive slot, proves it by the
// device's own hash and arms its trial boot, without rebooting (ab.Stage).
func StageImage(ctx context.Context, dial ssh.Dialer, name string, img *ab.Image, opts UpdateOptions) (*UpdateResult, error) {
	opts.defaults()
	boot, err := bootFor(img.Layout.AB)
	if err != nil {
		return &UpdateResult{Device: name}, fmt.Errorf("%s: %w", img.Name, err)
	}
	return ab.Stage(ctx, abDialer(dial, &opts, boot, &session{}, nil), name, img, ab.Options{Owner: "kiln stage", Log: opts.Log})
}

// updateImage is UpdateImage with every connection's ab.Device wrapped by
// wrap (if set): tests inject faults at typed steps there.
func updateImage(ctx context.Context, dial ssh.Dialer, name string, img *ab.Image, opts UpdateOptions, wrap func(ab.Device) ab.Device) (*UpdateResult, error) {
	opts.defaults()
	boot, err := bootFor(img.Layout.AB)
	if err != nil {
		return &UpdateResult{Device: name}, fmt.Errorf("%s: %w", img.Name, err)
	}
	host, _ := os.Hostname()
	owner := fmt.Sprintf("kiln on %s, pid %d, since %s", host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	return ab.Update(ctx, abDialer(dial, &opts, boot, &session{}, wrap), name, img, ab.Options{
		Health: opts.Health, HealthTimeout: opts.HealthTimeout, BootTimeout: opts.BootTimeout, TrialGrace: opts.TrialGrace,
		Owner: owner, Log: opts.Log,
	})
}

// connect dials the device and inspects it with the boot control its own
// kiln.json names.
func connect(ctx context.Context, dial ssh.Dialer, dsk string) (ssh.RunCloser, *remote, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	rem, err := inspect(ctx, &device{r: c}, dsk, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, rem, nil
}

// Status is what a device runs, read from the device itself.
type Status struct {
	Device     string `json:"device"`
	Running    string `json:"running_slot"`
	Committed  string `json:"committed_slot"`
	Derivation string `json:"derivation"`      // from the running slot's boot partition
	Board      string `json:"board,omitempty"` // the running slot's kiln.json board
	Trial      bool   `json:"trial"`           // running an uncommitted slot
}

// Inspect reads which slot the device runs and which image that slot holds.
func Inspect(ctx context.Context, dial ssh.Dialer, name, dsk string) (*Status, error) {
	if dsk == "" {
		dsk = "/dev/mmcblk0"
	}
	c, rem, err := connect(ctx, dial, dsk)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	d := rem.d
	st := &Status{Device: name, Running: rem.running.Name, Committed: rem.committed.Name, Trial: rem.running != rem.committed}
	bp, ok := rem.tbl.Partition(rem.running.Boot)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no boot partition %d", name, ErrLayout, rem.running.Boot)
	}
	l, err := disk.ReadMetadata(remoteReader(ctx, d, partDev(dsk, bp.Number), bp.Size))
	if err != nil {
		return nil, fmt.Errorf("%s: running slot's kiln.json: %w", name, err)
	}
	st.Derivation, st.Board = l.Derivation, l.Board
	return st, nil
}

// ImageDerivation returns the derivation hash recorded in an image's kiln.json.
func ImageDerivation(path string) (string, error) {
	f, img, err := openImage(path)
	if err != nil {
		return "", err
	}
	f.Close()
	return img.Layout.Derivation, nil
}

// ImageLayout returns an A/B image's kiln.json (its board, derivation and
// slots).
func ImageLayout(path string) (*Layout, error) {
	f, img, err := openImage(path)
	if err != nil {
		return nil, err
	}
	f.Close()
	return img.Layout, nil
}

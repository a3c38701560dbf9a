package sshdev

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"kiln.dev/kiln/image/disk"
)

// remoteReader reads a device partition over SSH in cached 64 KiB chunks.
func remoteReader(ctx context.Context, d *device, dev string, size int64) disk.ReadFunc {
	const chunk = 65536
	cache := map[int64][]byte{}
	return func(off, n int64) ([]byte, error) {
		if off+n > size {
			return nil, fmt.Errorf("read past the end of %s", dev)
		}
		out := make([]byte, 0, n)
		for pos := off; pos < off+n; {
			c := pos / chunk * chunk
			b, ok := cache[c]
			if !ok {
				var err error
				if b, err = d.readAt(ctx, dev, c, min(chunk, size-c)); err != nil {
					return nil, err
				}
				cache[c] = b
			}
			k := min(int64(len(b))-(pos-c), off+n-pos)
			out = append(out, b[pos-c:pos-c+k]...)
			pos += k
		}
		return out, nil
	}
}

// remote is what an update knows of the device.
type remote struct {
	d         *device
	disk      string
	tbl       *disk.Table
	layout    *disk.Metadata
	p1        disk.ReadFunc // partition 1, where kiln.json (and autoboot.txt) are
	autoboot  *disk.File    // read by tryboot
	env       *disk.File    // uboot.env, read by ubootEnv
	committed disk.Slot     // the slot the boot control boots by default
	running   disk.Slot     // the slot whose root the kernel runs
	bootID    string
	uptime    float64 // seconds since boot; -1 if the device does not say
}

var rootRE = regexp.MustCompile(`root=PARTUUID=([0-9A-Fa-f-]+)`)

// inspect reads the device's table, slots, boot state (through boot, or
// when nil the mechanism the device's kiln.json names) and running slot.
func inspect(ctx context.Context, d *device, dsk string, boot bootControl) (*remote, error) {
	r := &remote{d: d, disk: dsk}
	var err error
	if r.tbl, err = disk.ReadTable(func(off, n int64) ([]byte, error) { return d.readAt(ctx, dsk, off, n) }); err != nil {
		return nil, fmt.Errorf("%s: %w", dsk, err)
	}
	p1, ok := r.tbl.Partition(1)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no partition 1", dsk, ErrLayout)
	}
	rd := remoteReader(ctx, d, partDev(dsk, 1), p1.Size)
	if r.layout, err = disk.ReadMetadata(rd); err == nil {
		_, err = r.layout.ABSlots()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w: partition 1 has no kiln.json with two slots (%v)", dsk, ErrLayout, err)
	}
	r.p1 = rd
	own, err := bootFor(r.layout.AB)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", dsk, err)
	case boot == nil:
		boot = own
	case boot != own:
		// The image's mechanism is not the one the card's first partition
		// (which updates never rewrite) boots with.
		return nil, fmt.Errorf("%s: %w: the device's A/B is %q (its kiln.json), the image's another: the device would never boot the trial", dsk, ErrLayout, r.layout.AB)
	}
	all, err := boot.committed(ctx, r)
	if err != nil {
		return nil, err
	}
	cmdline, err := d.output(ctx, "cat /proc/cmdline")
	if err != nil {
		return nil, err
	}
	m := rootRE.FindStringSubmatch(cmdline)
	if m == nil {
		return nil, fmt.Errorf("%s: %w: /proc/cmdline has no root=PARTUUID=", dsk, ErrLayout)
	}
	runningRoot := 0
	for _, p := range r.tbl.Partitions {
		if strings.EqualFold(p.PartUUID, m[1]) {
			runningRoot = p.Number
		}
	}
	found := 0
	for _, s := range r.layout.Slots {
		if s.Boot == all {
			r.committed, found = s, found+1
		}
		if s.Root == runningRoot {
			r.running, found = s, found+1
		}
	}
	if found != 2 {
		return nil, fmt.Errorf("%s: %w: committed boot partition %d / running root %d match no slot", dsk, ErrLayout, all, runningRoot)
	}
	id, err := d.output(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil, err
	}
	r.bootID = strings.TrimSpace(id)
	r.uptime = -1
	if up, err := d.output(ctx, "cat /proc/uptime"); err == nil {
		if f := strings.Fields(up); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				r.uptime = v
			}
		}
	}
	return r, nil
}

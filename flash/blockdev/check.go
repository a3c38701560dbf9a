package blockdev

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// blk is a whole block device and its partitions, as sysfs shows them.
type blk struct {
	name  string          // sda, mmcblk0, loop3
	devs  map[string]bool // "major:minor" of the disk and every partition
	parts []string        // partition names
	sys   string          // /sys/block/<name>
}

// diskOf finds the disk whose device number is dev ("major:minor"). For a
// partition it returns the disk it is on, and isPart.
func diskOf(dev string) (*blk, bool, error) {
	p, err := filepath.EvalSymlinks("/sys/dev/block/" + dev)
	if err != nil {
		return nil, false, err
	}
	isPart := false
	if _, err := os.Stat(filepath.Join(p, "partition")); err == nil {
		p, isPart = filepath.Dir(p), true
	}
	d := &blk{name: filepath.Base(p), devs: map[string]bool{}, sys: p}
	if b, err := os.ReadFile(filepath.Join(p, "dev")); err == nil {
		d.devs[strings.TrimSpace(string(b))] = true
	}
	ents, _ := os.ReadDir(p)
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(p, e.Name(), "partition")); err != nil {
			continue
		}
		d.parts = append(d.parts, e.Name())
		if b, err := os.ReadFile(filepath.Join(p, e.Name(), "dev")); err == nil {
			d.devs[strings.TrimSpace(string(b))] = true
		}
	}
	return d, isPart, nil
}

// mounts returns the mount points of mountinfo, by "major:minor".
func mounts(proc string) (map[string][]string, error) {
	name := "/proc/self/mountinfo"
	if proc != "" {
		name = filepath.Join(proc, "mountinfo")
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 {
			m[fs[2]] = append(m[fs[2]], fs[4])
		}
	}
	return m, sc.Err()
}

// check refuses what must not be written and returns the device's size.
func check(path string, opts Options) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("blockdev: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("blockdev: %s: %w", path, ErrNotBlockDevice)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	d, isPart, err := diskOf(dev)
	if err != nil {
		return 0, fmt.Errorf("blockdev: %s: %w", path, err)
	}
	if isPart {
		return 0, fmt.Errorf("blockdev: %s is a partition of %s: an image goes onto the whole disk", path, d.name)
	}
	ms, err := mounts(opts.proc)
	if err != nil {
		return 0, fmt.Errorf("blockdev: %w", err)
	}
	// The disk the running system lives on: the one holding "/".
	for num, points := range ms {
		for _, mp := range points {
			if mp != "/" {
				continue
			}
			if root, _, err := diskOf(num); err == nil && root.name == d.name {
				return 0, fmt.Errorf("blockdev: %s: %w (/ is mounted from it)", path, ErrSystemDisk)
			}
		}
	}
	for num := range d.devs {
		if points := ms[num]; len(points) > 0 {
			return 0, fmt.Errorf("blockdev: %s: %w: %s (device %s) is mounted on %s", path, ErrMounted, d.name, num, strings.Join(points, ", "))
		}
	}
	for _, n := range append([]string{""}, d.parts...) {
		holders, _ := os.ReadDir(filepath.Join(d.sys, n, "holders"))
		if len(holders) > 0 {
			return 0, fmt.Errorf("blockdev: %s: %w: %s is held by %s (device-mapper, RAID or LVM)", path, ErrMounted, filepath.Join(d.name, n), holders[0].Name())
		}
	}
	if b, err := os.ReadFile(filepath.Join(d.sys, "removable")); err == nil && !removable(d.sys) && !opts.Force {
		return 0, fmt.Errorf("blockdev: %s: %w (sysfs says removable=%s)", path, ErrNotRemovable, strings.TrimSpace(string(b)))
	}
	b, err := os.ReadFile(filepath.Join(d.sys, "size"))
	if err != nil {
		return 0, fmt.Errorf("blockdev: %w", err)
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("blockdev: %s size: %w", d.name, err)
	}
	return sectors * 512, nil
}

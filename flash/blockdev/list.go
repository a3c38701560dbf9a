package blockdev

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Disk is a whole disk of this machine as List shows it: what a user needs
// to tell an SD card from the disk their system lives on.
type Disk struct {
	Path      string   `json:"path"`             // /dev/sdb
	Size      int64    `json:"size"`             // bytes
	Vendor    string   `json:"vendor,omitempty"` // sysfs device/vendor
	Model     string   `json:"model,omitempty"`  // sysfs device/model
	ByID      []string `json:"by_id,omitempty"`  // /dev/disk/by-id links to it
	Removable bool     `json:"removable"`
	Mounted   []string `json:"mounted,omitempty"` // mount points of it or its partitions
	System    bool     `json:"system,omitempty"`  // holds "/"
}

// ListOptions say where List looks; empty fields are this machine's.
type ListOptions struct {
	Sys  string // sysfs root ("/sys")
	Dev  string // device root ("/dev")
	Proc string // where mountinfo is ("/proc/self")
	// All lists non-removable disks too.
	All bool
}

// List returns the disks of this machine (removable ones only unless
// opts.All), with size, model and /dev/disk/by-id names, sorted by path.
// Empty disks (a card reader without a card, an unused loop device) are
// left out. It never picks one: which disk gets an image is the user's
// word (kiln flash --port).
func List(opts ListOptions) ([]Disk, error) {
	sys, dev := opts.Sys, opts.Dev
	if sys == "" {
		sys = "/sys"
	}
	if dev == "" {
		dev = "/dev"
	}
	ents, err := os.ReadDir(filepath.Join(sys, "block"))
	if err != nil {
		return nil, fmt.Errorf("blockdev: list disks: %w", err)
	}
	ms, _ := mounts(opts.Proc)
	var out []Disk
	for _, e := range ents {
		name := e.Name()
		dir := filepath.Join(sys, "block", name)
		read := func(f string) string {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			return strings.TrimSpace(string(b))
		}
		sectors, err := strconv.ParseInt(read("size"), 10, 64)
		if err != nil || sectors == 0 {
			continue
		}
		d := Disk{Path: filepath.Join(dev, name), Size: sectors * 512, Vendor: read("device/vendor"), Model: read("device/model"),
			Removable: removable(dir)}
		if !d.Removable && !opts.All {
			continue
		}
		nums := []string{read("dev")}
		parts, _ := os.ReadDir(dir)
		for _, p := range parts {
			if _, err := os.Stat(filepath.Join(dir, p.Name(), "partition")); err == nil {
				b, _ := os.ReadFile(filepath.Join(dir, p.Name(), "dev"))
				nums = append(nums, strings.TrimSpace(string(b)))
			}
		}
		for _, n := range nums {
			for _, mp := range ms[n] {
				d.Mounted = append(d.Mounted, mp)
				d.System = d.System || mp == "/"
			}
		}
		out = append(out, d)
	}
	// /dev/disk/by-id: the stable names (usb-Generic_SD_Card-0:0) a user
	// can paste into --port; partitions' links are left out.
	ids, _ := os.ReadDir(filepath.Join(dev, "disk", "by-id"))
	for _, id := range ids {
		link := filepath.Join(dev, "disk", "by-id", id.Name())
		target, err := os.Readlink(link)
		if err != nil {
			continue
		}
		base := filepath.Base(target)
		for i := range out {
			if filepath.Base(out[i].Path) == base {
				out[i].ByID = append(out[i].ByID, link)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// String is one line a user reads: path, size, model, the by-id name.
func (d Disk) String() string {
	s := fmt.Sprintf("%s  %s", d.Path, humanSize(d.Size))
	if m := strings.TrimSpace(d.Vendor + " " + d.Model); m != "" {
		s += "  " + m
	}
	if len(d.ByID) > 0 {
		s += "  " + d.ByID[0]
	}
	if !d.Removable {
		s += "  (not removable)"
	}
	if len(d.Mounted) > 0 {
		s += "  (mounted on " + strings.Join(d.Mounted, ", ") + ")"
	}
	return s
}

func humanSize(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%d bytes", n)
}

// removable reports whether the disk at sysfs dir is one a user takes out:
// sysfs says removable=1 (USB card readers), or it is an SD/MMC card
// (mmcblk of a built-in reader says removable=0; its device/type says SD).
func removable(dir string) bool {
	b, _ := os.ReadFile(filepath.Join(dir, "removable"))
	if strings.TrimSpace(string(b)) == "1" {
		return true
	}
	t, _ := os.ReadFile(filepath.Join(dir, "device", "type"))
	switch strings.TrimSpace(string(t)) {
	case "SD", "MMC":
		return true
	}
	return false
}

// Package sshtest runs Raspberry Pi stand-ins for kiln's SSH updater tests:
// each device is a real OpenSSH server in its own network and PID
// namespaces, chrooted into a busybox userland (the stock tools: sh, dd,
// sha256sum, cat, reboot), whose SD card is a loop device holding a disk
// image. A small boot controller implements the Raspberry Pi firmware's
// tryboot semantics: on `reboot` it reads autoboot.txt from partition 1,
// honours the one-shot tryboot flag, reads cmdline.txt from the chosen boot
// partition and "boots" the root it names, so a reboot switches the running
// slot exactly as on the hardware. On a card whose partition 1 holds
// uboot.env it plays U-Boot running kiln's boot.scr instead (abtest's
// UBootChoose: boot counter, fallback past bootlimit, saveenv onto the
// card). PowerCut kills every process of the
// device at once, as pulling the plug would.
//
// Everything needs root, ip(8), sshd(8), ssh-keygen(1), losetup(8), mtools
// and busybox; Available reports what is missing.
package sshtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/image/disk"
)

// Available returns an error naming the first missing requirement.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, loop devices)")
	}
	for _, tool := range []string{"ip", "/usr/sbin/sshd", "ssh-keygen", "losetup", "mtype", "busybox", "unshare", "sfdisk", "addpart", "mkfs.vfat", "mcopy", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s", tool)
		}
	}
	return nil
}

var seq atomic.Int32

// Device is one emulated Raspberry Pi.
type Device struct {
	Name     string
	Addr     string // IP address inside its network namespace
	Dir      string // the chroot: the device's root file system
	Loop     string // /dev/loopN: its SD card
	Image    string // the loop device's backing file
	HostKey  string // known_hosts line
	netns    string
	veth     string
	cfg      string
	stateDir string

	mu       sync.Mutex
	sshd     *exec.Cmd
	boots    int
	bootedAt time.Time
	running  int // root partition number the device runs
	bootPart int // boot partition it booted from
	stop     chan struct{}
	done     chan struct{}
	extra    []string // more loop devices
	ubootLog []string // what the U-Boot stand-in said at each boot
}

// UBootLog returns what the U-Boot stand-in said at each boot of a card
// with uboot.env: the slot, the boot counter, any fallback.
func (d *Device) UBootLog() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.ubootLog...)
}

// Fleet holds devices and the client key that can log in to all of them.
type Fleet struct {
	Dir        string
	ClientKey  string // private key file
	KnownHosts string // known_hosts with every device
	Devices    []*Device
	authKeys   string
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// NewFleet makes an empty fleet with a fresh client key. Close removes everything.
func NewFleet() (*Fleet, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	// sshd refuses chroots below world-writable directories such as /tmp.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("/run", "kiln-fleet-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	f := &Fleet{Dir: dir, ClientKey: filepath.Join(dir, "id_ed25519"), KnownHosts: filepath.Join(dir, "known_hosts"), authKeys: filepath.Join(dir, "authorized_keys")}
	if _, err := run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f.ClientKey); err != nil {
		f.Close()
		return nil, err
	}
	pub, _ := os.ReadFile(f.ClientKey + ".pub")
	os.WriteFile(f.authKeys, pub, 0o600)
	os.WriteFile(f.KnownHosts, nil, 0o600)
	return f, nil
}

// Close stops every device and removes their namespaces, loop devices and files.
func (f *Fleet) Close() {
	for _, d := range f.Devices {
		d.Close()
	}
	os.RemoveAll(f.Dir)
}

// AddDevice starts a device whose SD card holds a copy of image.
func (f *Fleet) AddDevice(image string) (*Device, error) {
	n := int(seq.Add(1))
	pid := os.Getpid() % 200
	d := &Device{
		Name:  fmt.Sprintf("pi%d", n),
		Addr:  fmt.Sprintf("10.%d.%d.2", 200+pid%50, n),
		netns: fmt.Sprintf("kiln-%d-%d", os.Getpid(), n),
		veth:  fmt.Sprintf("kv%d-%d", os.Getpid()%100000, n),
	}
	d.stateDir = filepath.Join(f.Dir, d.Name)
	d.Dir = filepath.Join(d.stateDir, "root")
	d.Image = filepath.Join(d.stateDir, "sd.img")
	f.Devices = append(f.Devices, d)
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := copyFile(image, d.Image); err != nil {
		return nil, err
	}
	out, err := run("losetup", "--show", "-P", "-f", d.Image)
	if err != nil {
		return nil, err
	}
	d.Loop = strings.TrimSpace(out)
	if err := AddPartitions(d.Loop); err != nil {
		return nil, err
	}
	if err := d.makeRoot(); err != nil {
		return nil, err
	}
	if err := d.makeNet(); err != nil {
		return nil, err
	}
	key := filepath.Join(d.stateDir, "ssh_host_ed25519_key")
	if _, err := run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key); err != nil {
		return nil, err
	}
	pub, _ := os.ReadFile(key + ".pub")
	fields := strings.Fields(string(pub))
	d.HostKey = fmt.Sprintf("%s %s %s", d.Addr, fields[0], fields[1])
	kh, _ := os.ReadFile(f.KnownHosts)
	os.WriteFile(f.KnownHosts, append(kh, []byte(d.HostKey+"\n")...), 0o600)
	d.cfg = filepath.Join(d.stateDir, "sshd_config")
	cfg := fmt.Sprintf(`ListenAddress %s
HostKey %s
PidFile none
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
ChrootDirectory %s
LogLevel ERROR
MaxSessions 64
MaxStartups 64
`, d.Addr, key, f.authKeys, d.Dir)
	if err := os.WriteFile(d.cfg, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	if err := d.Boot(false); err != nil {
		return nil, err
	}
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go d.watchReboots()
	return d, nil
}

func copyFile(src, dst string) error {
	_, err := run("cp", "--sparse=always", src, dst)
	return err
}

// makeRoot builds the chroot: busybox, /proc/cmdline, device nodes, reboot.
func (d *Device) makeRoot() error {
	for _, sub := range []string{"bin", "sbin", "usr/bin", "dev", "proc/sys/kernel/random", "run", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(d.Dir, sub), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(d.Dir, "tmp"), 0o1777)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	if err := copyFile(bb, filepath.Join(d.Dir, "bin/busybox")); err != nil {
		return err
	}
	list, err := run(bb, "--list")
	if err != nil {
		return err
	}
	for _, a := range strings.Fields(list) {
		if a == "busybox" || a == "reboot" {
			continue
		}
		os.Symlink("busybox", filepath.Join(d.Dir, "bin", a))
	}
	// root's login shell is bash on the host; the device's is busybox sh.
	os.WriteFile(filepath.Join(d.Dir, "bin/bash"), []byte("#!/bin/sh\nexec /bin/sh \"$@\"\n"), 0o755)
	// reboot asks the boot controller; the machine goes down under it.
	os.WriteFile(filepath.Join(d.Dir, "sbin/reboot"), []byte("#!/bin/sh\necho \"$*\" > /run/reboot.tmp && mv /run/reboot.tmp /run/reboot-request\nsleep 60\n"), 0o755)
	os.WriteFile(filepath.Join(d.Dir, "usr/bin/health"), []byte("#!/bin/sh\nexit 0\n"), 0o755)
	os.WriteFile(filepath.Join(d.Dir, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	for name, dev := range map[string][2]uint32{"null": {1, 3}, "zero": {1, 5}, "urandom": {1, 9}} {
		if err := syscall.Mknod(filepath.Join(d.Dir, "dev", name), syscall.S_IFCHR|0o666, int(dev[0]<<8|dev[1])); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	}
	return d.makeDisks()
}

// makeDisks creates /dev/mmcblk0 and its partitions in the chroot for the loop device.
func (d *Device) makeDisks() error {
	base := filepath.Base(d.Loop)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := mknodFromSys(base, filepath.Join(d.Dir, "dev/mmcblk0")); err != nil {
			return err
		}
		parts, _ := filepath.Glob("/sys/class/block/" + base + "p*")
		if len(parts) > 0 || time.Now().After(deadline) {
			for _, p := range parts {
				n := strings.TrimPrefix(filepath.Base(p), base+"p")
				if err := mknodFromSys(filepath.Base(p), filepath.Join(d.Dir, "dev/mmcblk0p"+n)); err != nil {
					return err
				}
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mknodFromSys(name, path string) error {
	b, err := os.ReadFile("/sys/class/block/" + name + "/dev")
	if err != nil {
		return err
	}
	var maj, min int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
		return err
	}
	os.Remove(path)
	return syscall.Mknod(path, syscall.S_IFBLK|0o600, maj<<8|min&0xff|(min&^0xff)<<12)
}

func (d *Device) makeNet() error {
	host := d.Addr[:strings.LastIndexByte(d.Addr, '.')] + ".1"
	steps := [][]string{
		{"netns", "add", d.netns},
		{"link", "add", d.veth + "h", "type", "veth", "peer", "name", d.veth + "d", "netns", d.netns},
		{"addr", "add", host + "/24", "dev", d.veth + "h"},
		{"link", "set", d.veth + "h", "up"},
		{"-n", d.netns, "addr", "add", d.Addr + "/24", "dev", d.veth + "d"},
		{"-n", d.netns, "link", "set", d.veth + "d", "up"},
		{"-n", d.netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := run("ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// SetHealth makes the device's /usr/bin/health run script (a shell body).
func (d *Device) SetHealth(script string) error {
	return os.WriteFile(filepath.Join(d.Dir, "usr/bin/health"), []byte("#!/bin/sh\n"+script+"\n"), 0o755)
}

// PartDev returns the host path of partition n of the device's card.
func (d *Device) PartDev(n int) string { return fmt.Sprintf("%sp%d", d.Loop, n) }

var rootRE = regexp.MustCompile(`root=PARTUUID=([0-9A-Fa-f-]+)`)

// Boot powers the device on: the firmware reads autoboot.txt, picks the boot
// partition ([tryboot] when the one-shot flag is set), and the kernel runs
// the root that partition's cmdline.txt names. A trial slot that cannot boot
// (no cmdline.txt, a root without a squashfs) falls back to the normal boot,
// as the hardware watchdog would.
func (d *Device) Boot(tryboot bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A device boots from power-off: a running one (a reboot racing a power
	// cycle in a test) goes down first, so one sshd serves it, never two.
	if d.sshd != nil {
		d.powerCut()
	}
	bootPart, root, cmdline, err := d.firmware(tryboot)
	if err != nil && tryboot {
		bootPart, root, cmdline, err = d.firmware(false)
	}
	if err != nil {
		return fmt.Errorf("%s does not boot: %w", d.Name, err)
	}
	id := make([]byte, 16)
	rand.Read(id)
	os.WriteFile(filepath.Join(d.Dir, "proc/cmdline"), []byte(cmdline+"\n"), 0o644)
	os.WriteFile(filepath.Join(d.Dir, "proc/sys/kernel/random/boot_id"), []byte(hex.EncodeToString(id)+"\n"), 0o644)
	// /run is a tmpfs on the device: every boot starts it empty.
	run := filepath.Join(d.Dir, "run")
	if ents, err := os.ReadDir(run); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(run, e.Name()))
		}
	}
	d.bootPart, d.running, d.bootedAt = bootPart, root, time.Now()
	d.writeUptime()
	d.boots++
	cmd := exec.Command("ip", "netns", "exec", d.netns, "unshare", "--pid", "--fork", "--kill-child", "/usr/sbin/sshd", "-D", "-e", "-f", d.cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	d.sshd = cmd
	// Wait until sshd listens.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "netns", "exec", d.netns, "ss", "-Hltn").Output()
		if strings.Contains(string(out), d.Addr+":22") {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s: sshd did not start: %s", d.Name, stderr.String())
}

// firmware decides what would boot: U-Boot's choice when partition 1 holds
// uboot.env, else the firmware's from autoboot.txt.
func (d *Device) firmware(tryboot bool) (bootPart, root int, cmdline string, err error) {
	if env, err := d.ubootEnv(); err == nil {
		return d.ubootChoose(env)
	} else if !errors.Is(err, disk.ErrNotFound) {
		return 0, 0, "", err
	}
	ab, err := run("mtype", "-i", d.PartDev(1), "::autoboot.txt")
	if err != nil {
		return 0, 0, "", fmt.Errorf("autoboot.txt: %w", err)
	}
	section, all, try := "all", 0, 0
	for _, line := range strings.Split(ab, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
		} else if v, ok := strings.CutPrefix(line, "boot_partition="); ok {
			n, _ := strconv.Atoi(v)
			if section == "tryboot" {
				try = n
			} else {
				all = n
			}
		}
	}
	bootPart = all
	if tryboot && try != 0 {
		bootPart = try
	}
	if bootPart == 0 {
		return 0, 0, "", fmt.Errorf("autoboot.txt names no boot partition")
	}
	return d.slotBoot(bootPart)
}

// slotBoot is the boot of boot partition bootPart: the root its
// cmdline.txt names must hold a squashfs.
func (d *Device) slotBoot(bootPart int) (_, root int, cmdline string, err error) {
	cl, err := run("mtype", "-i", d.PartDev(bootPart), "::cmdline.txt")
	if err != nil {
		return 0, 0, "", fmt.Errorf("partition %d: cmdline.txt: %w", bootPart, err)
	}
	m := rootRE.FindStringSubmatch(cl)
	if m == nil {
		return 0, 0, "", fmt.Errorf("partition %d: cmdline.txt names no root", bootPart)
	}
	parts, _ := filepath.Glob(d.Loop + "p*")
	for _, p := range parts {
		u, _ := run("blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID", p)
		if strings.EqualFold(strings.TrimSpace(u), m[1]) {
			root, _ = strconv.Atoi(strings.TrimPrefix(p, d.Loop+"p"))
		}
	}
	if root == 0 {
		return 0, 0, "", fmt.Errorf("no partition has PARTUUID %s", m[1])
	}
	f, err := os.Open(d.PartDev(root))
	if err != nil {
		return 0, 0, "", err
	}
	magic := make([]byte, 4)
	_, err = f.ReadAt(magic, 0)
	f.Close()
	if err != nil || string(magic) != "hsqs" {
		return 0, 0, "", fmt.Errorf("root partition %d holds no squashfs", root)
	}
	return bootPart, root, strings.TrimSpace(cl), nil
}

// PowerCut kills every process of the device at once.
func (d *Device) PowerCut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.powerCut()
}

// powerCut is PowerCut with d.mu held.
func (d *Device) powerCut() {
	if d.sshd != nil && d.sshd.Process != nil {
		d.sshd.Process.Kill()
		d.sshd.Wait()
	}
	d.sshd = nil
	// The PID namespace's init died: the kernel kills the rest. Wait for them.
	for i := 0; i < 500; i++ {
		out, _ := exec.Command("ip", "netns", "pids", d.netns).Output()
		if len(bytes.TrimSpace(out)) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Freeze stops every process of the device where it is (SIGSTOP): the
// device no longer answers, though its network stack still does — as a
// device whose system hangs mid-write. Thaw lets it run again.
func (d *Device) Freeze() error { return d.signalAll("STOP") }

// Thaw resumes a frozen device.
func (d *Device) Thaw() error { return d.signalAll("CONT") }

func (d *Device) signalAll(sig string) error {
	out, err := exec.Command("ip", "netns", "pids", d.netns).Output()
	if err != nil {
		return err
	}
	pids := strings.Fields(string(out))
	if len(pids) == 0 {
		return fmt.Errorf("%s: no processes", d.Name)
	}
	// A short-lived process may exit between the listing and the signal:
	// kill then fails for it but signals the rest.
	exec.Command("kill", append([]string{"-" + sig}, pids...)...).Run()
	return nil
}

// PowerCycle cuts power and boots normally (no tryboot flag).
func (d *Device) PowerCycle() error {
	d.PowerCut()
	return d.Boot(false)
}

// Root returns the root partition the device runs.
func (d *Device) Root() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.running
}

// BootPartition returns the boot partition the device booted from.
func (d *Device) BootPartition() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bootPart
}

// Boots counts boots so far.
func (d *Device) Boots() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.boots
}

func (d *Device) watchReboots() {
	defer close(d.done)
	req := filepath.Join(d.Dir, "run/reboot-request")
	for {
		select {
		case <-d.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		d.mu.Lock()
		d.writeUptime()
		d.mu.Unlock()
		b, err := os.ReadFile(req)
		if err != nil {
			continue
		}
		os.Remove(req)
		d.PowerCut()
		if err := d.Boot(strings.Contains(string(b), "tryboot")); err != nil {
			fmt.Fprintln(os.Stderr, "sshtest:", err)
		}
	}
}

// writeUptime keeps the device's /proc/uptime current (seconds since its boot).
func (d *Device) writeUptime() {
	// Replaced whole, never rewritten in place: a reader must not see it empty.
	up := time.Since(d.bootedAt).Seconds()
	p := filepath.Join(d.Dir, "proc/uptime")
	if os.WriteFile(p+".tmp", []byte(fmt.Sprintf("%.2f %.2f\n", up, up)), 0o644) == nil {
		os.Rename(p+".tmp", p)
	}
}

// Close stops the device and frees its loop device and namespace.
func (d *Device) Close() {
	if d.stop != nil {
		select {
		case <-d.stop:
		default:
			close(d.stop)
			<-d.done
		}
	}
	d.PowerCut()
	if d.Loop != "" {
		run("losetup", "-d", d.Loop)
	}
	for _, l := range d.extra {
		run("losetup", "-d", l)
	}
	run("ip", "link", "del", d.veth+"h")
	run("ip", "netns", "del", d.netns)
}

// Wait waits until ctx ends or cond holds.
func Wait(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}

// AddDisk gives the device another block device /dev/NAME (a card reader)
// backed by a file of size bytes filled with fill, and returns the file.
func (d *Device) AddDisk(name string, size int64, fill byte) (string, error) {
	path := filepath.Join(d.stateDir, name+".disk")
	if err := os.WriteFile(path, bytes.Repeat([]byte{fill}, int(size)), 0o600); err != nil {
		return "", err
	}
	out, err := run("losetup", "--show", "-f", path)
	if err != nil {
		return "", err
	}
	loop := strings.TrimSpace(out)
	d.extra = append(d.extra, loop)
	return path, mknodFromSys(filepath.Base(loop), filepath.Join(d.Dir, "dev", name))
}

// LimitRate shapes the link to the device (host → device) to rate, e.g.
// "100mbit" for a Raspberry Pi 3B's Ethernet, with tc's token bucket filter.
func (d *Device) LimitRate(rate string) error {
	_, err := run("tc", "qdisc", "replace", "dev", d.veth+"h", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms")
	return err
}

// AddPartitions tells the kernel about the loop device's partitions. The
// kernel may have no partition-table parsers at all, so the table is read
// in user space (sfdisk) and each partition added with addpart; MBR extended
// containers are skipped (adding one whole would overlap its logical
// partitions, which the kernel refuses).
func AddPartitions(loop string) error {
	out, err := run("sfdisk", "-J", loop)
	if err != nil {
		return err
	}
	var t struct {
		PartitionTable struct {
			Partitions []struct {
				Node  string `json:"node"`
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(out), &t); err != nil {
		return fmt.Errorf("sfdisk -J %s: %w", loop, err)
	}
	for _, p := range t.PartitionTable.Partitions {
		switch strings.ToLower(p.Type) {
		case "5", "f", "85":
			continue
		}
		n := strings.TrimPrefix(p.Node, loop+"p")
		if _, err := os.Stat(fmt.Sprintf("/sys/class/block/%sp%s", filepath.Base(loop), n)); err == nil {
			continue
		}
		if _, err := run("addpart", loop, n, fmt.Sprint(p.Start), fmt.Sprint(p.Size)); err != nil {
			return err
		}
	}
	return nil
}

// Start starts a set of test devices for a test or benchmark, skipping it
// where they cannot run (not root, tools missing) and closing them when it
// ends.
func Start(tb testing.TB) *Fleet {
	tb.Helper()
	if err := Available(); err != nil {
		tb.Skipf("test devices need root and the real tools: %v", err)
	}
	f, err := NewFleet()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Close)
	return f
}

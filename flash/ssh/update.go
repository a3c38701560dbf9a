package ssh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ssh/devhelper"
)

// Layout is what kiln.json on an image's first partition says about its slots.
type Layout struct {
	Derivation string `json:"derivation"`
	Name       string `json:"name,omitempty"`
	Board      string `json:"board,omitempty"`
	// AB is the image's A/B mechanism; "" and "tryboot" are the Raspberry
	// Pi firmware's autoboot.txt, the one this updater drives.
	AB    string `json:"ab,omitempty"`
	Slots []Slot `json:"slots"`
}

// Slot is one A/B slot: a boot partition and a root partition.
type Slot struct {
	Name string `json:"name"`
	Boot int    `json:"boot"`
	Root int    `json:"root"`
}

// RunCloser is a Runner that can be closed: one connection to a device.
type RunCloser interface {
	Runner
	io.Closer
}

// Dialer opens a new connection to the device (updates reconnect after reboots).
type Dialer func(ctx context.Context) (RunCloser, error)

// DialerFor returns a Dialer for a real device.
func DialerFor(a Addr, opts Options) Dialer {
	return func(ctx context.Context) (RunCloser, error) { return Dial(ctx, a, opts) }
}

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
	Log           func(format string, a ...any)
	Progress      flash.Progress // phases "root" and "boot": bytes of the slot compared or written
}

// UpdateResult is what an update did.
type UpdateResult struct {
	Device      string  `json:"device"`
	From        string  `json:"from_slot"`
	To          string  `json:"to_slot"`
	Derivation  string  `json:"derivation"`
	RootSHA256  string  `json:"root_sha256"`
	BootSHA256  string  `json:"boot_sha256"`
	BytesSent   int64   `json:"bytes_sent"`
	BytesImage  int64   `json:"bytes_image"`
	Committed   bool    `json:"committed"`
	RolledBack  bool    `json:"rolled_back"`
	Reason      string  `json:"reason,omitempty"`
	UsedHelper  bool    `json:"used_helper"`
	WriteSec    float64 `json:"write_verify_s"` // writing and proving both partitions
	DurationSec float64 `json:"duration_s"`
}

var (
	// ErrRolledBack means the new slot failed its trial boot or health check
	// and the device is back on its committed slot.
	ErrRolledBack = errors.New("update rolled back")
	// ErrLayout means the device or the image has no usable A/B layout.
	ErrLayout = errors.New("no A/B layout")
	// ErrBusy means another update holds the device's update lock.
	ErrBusy = errors.New("another update is in progress")
)

// partDev names partition n of disk (/dev/mmcblk0 → /dev/mmcblk0p2, /dev/sda → /dev/sda2).
func partDev(disk string, n int) string {
	if c := disk[len(disk)-1]; c >= '0' && c <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

// localImage is an image file on the host.
type localImage struct {
	f      *os.File
	parts  []Partition
	layout Layout
}

func openImage(path string) (*localImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	parts, err := ReadTable(func(off, n int64) ([]byte, error) {
		b := make([]byte, n)
		_, err := f.ReadAt(b, off)
		return b, err
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	for _, p := range parts {
		if p.Start+p.Size > st.Size() {
			f.Close()
			return nil, fmt.Errorf("%s: truncated: partition %d ends at byte %d, the file has %d", path, p.Number, p.Start+p.Size, st.Size())
		}
	}
	img := &localImage{f: f, parts: parts}
	p1, ok := partByNum(parts, 1)
	if !ok {
		f.Close()
		return nil, fmt.Errorf("%s: %w: no partition 1", path, ErrLayout)
	}
	kj, err := readFATFile(fileReader(f, p1), "kiln.json")
	if err == nil {
		err = json.Unmarshal(kj.Data, &img.layout)
	}
	if err != nil || len(img.layout.Slots) != 2 {
		f.Close()
		return nil, fmt.Errorf("%s: %w: partition 1 has no kiln.json with two slots (%v)", path, ErrLayout, err)
	}
	if ab := img.layout.AB; ab != "" && ab != "tryboot" {
		f.Close()
		return nil, fmt.Errorf("%s: %w: its A/B is %q, and kiln update arms and commits trials through autoboot.txt (tryboot) only", path, ErrLayout, ab)
	}
	return img, nil
}

func fileReader(f io.ReaderAt, p Partition) readerAt {
	return func(off, n int64) ([]byte, error) {
		if off+n > p.Size {
			return nil, fmt.Errorf("read past partition %d", p.Number)
		}
		b := make([]byte, n)
		_, err := f.ReadAt(b, p.Start+off)
		return b, err
	}
}

func partByNum(parts []Partition, n int) (Partition, bool) {
	for _, p := range parts {
		if p.Number == n {
			return p, true
		}
	}
	return Partition{}, false
}

// sourceSlot returns the boot and root partitions of the image's first
// slot: what an update writes to the device's inactive slot.
func (img *localImage) sourceSlot(path string) (boot, root Partition, err error) {
	src := img.layout.Slots[0]
	boot, ok1 := partByNum(img.parts, src.Boot)
	root, ok2 := partByNum(img.parts, src.Root)
	if !ok1 || !ok2 {
		return boot, root, fmt.Errorf("%s: %w: slot %s partitions missing", path, ErrLayout, src.Name)
	}
	return boot, root, nil
}

// slotBoot returns the image's boot partition as kiln writes it to a
// device slot: cmdline.txt names the device's root by its PARTUUID.
func (img *localImage) slotBoot(path string, srcBoot, srcRoot Partition, rootPartUUID string) ([]byte, error) {
	boot := make([]byte, srcBoot.Size)
	if _, err := img.f.ReadAt(boot, srcBoot.Start); err != nil {
		return nil, err
	}
	cl, err := readFATFile(func(off, n int64) ([]byte, error) { return boot[off : off+n], nil }, "cmdline.txt")
	if err != nil {
		return nil, fmt.Errorf("%s: boot partition: %w", path, err)
	}
	writes, _, err := patchFATFile(cl, "PARTUUID="+srcRoot.PartUUID, "PARTUUID="+rootPartUUID)
	if err != nil {
		return nil, fmt.Errorf("%s: cmdline.txt: %w", path, err)
	}
	for off, b := range writes {
		copy(boot[off:], b)
	}
	return boot, nil
}

// remoteReader reads a device partition over SSH in cached 64 KiB chunks.
func remoteReader(ctx context.Context, d *device, dev string, size int64) readerAt {
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
	parts     []Partition
	layout    Layout
	autoboot  *fatFile
	committed Slot // the slot autoboot.txt [all] boots
	running   Slot // the slot whose root the kernel runs
	bootID    string
	uptime    float64 // seconds since boot; -1 if the device does not say
}

var rootRE = regexp.MustCompile(`root=PARTUUID=([0-9A-Fa-f-]+)`)

// inspect reads the device's table, slots, autoboot.txt and running slot.
func inspect(ctx context.Context, d *device, disk string) (*remote, error) {
	r := &remote{d: d}
	var err error
	if r.parts, err = ReadTable(func(off, n int64) ([]byte, error) { return d.readAt(ctx, disk, off, n) }); err != nil {
		return nil, fmt.Errorf("%s: %w", disk, err)
	}
	p1, ok := partByNum(r.parts, 1)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no partition 1", disk, ErrLayout)
	}
	rd := remoteReader(ctx, d, partDev(disk, 1), p1.Size)
	kj, err := readFATFile(rd, "kiln.json")
	if err == nil {
		err = json.Unmarshal(kj.Data, &r.layout)
	}
	if err != nil || len(r.layout.Slots) != 2 {
		return nil, fmt.Errorf("%s: %w: partition 1 has no kiln.json with two slots (%v)", disk, ErrLayout, err)
	}
	if r.autoboot, err = readFATFile(rd, "autoboot.txt"); err != nil {
		return nil, fmt.Errorf("%s: autoboot.txt: %w", disk, err)
	}
	all, _, err := parseAutoboot(r.autoboot.Data)
	if err != nil {
		return nil, err
	}
	cmdline, err := d.output(ctx, "cat /proc/cmdline")
	if err != nil {
		return nil, err
	}
	m := rootRE.FindStringSubmatch(cmdline)
	if m == nil {
		return nil, fmt.Errorf("%s: %w: /proc/cmdline has no root=PARTUUID=", disk, ErrLayout)
	}
	runningRoot := 0
	for _, p := range r.parts {
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
		return nil, fmt.Errorf("%s: %w: committed boot partition %d / running root %d match no slot", disk, ErrLayout, all, runningRoot)
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

// parseAutoboot returns boot_partition in [all] and in [tryboot].
func parseAutoboot(b []byte) (all, try int, err error) {
	section := "all"
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case strings.HasPrefix(line, "boot_partition="):
			n, e := strconv.Atoi(strings.TrimPrefix(line, "boot_partition="))
			if e != nil {
				return 0, 0, fmt.Errorf("autoboot.txt: bad %q", line)
			}
			if section == "tryboot" {
				try = n
			} else {
				all = n
			}
		}
	}
	if all == 0 {
		return 0, 0, fmt.Errorf("autoboot.txt: no boot_partition in [all]")
	}
	return all, try, nil
}

// autobootText is kiln's autoboot.txt. Its length does not depend on the
// (single-digit) partition numbers, so rewriting it changes bytes in place
// inside one sector.
func autobootText(all, try int) string {
	return fmt.Sprintf("[all]\ntryboot_a_b=1\nboot_partition=%d\n[tryboot]\nboot_partition=%d\n", all, try)
}

// setAutoboot rewrites autoboot.txt in place and reads it back.
func (r *remote) setAutoboot(ctx context.Context, disk string, all, try int) error {
	want := autobootText(all, try)
	if len(want) != len(r.autoboot.Data) {
		return fmt.Errorf("autoboot.txt is %d bytes, kiln's is %d: cannot rewrite it in place", len(r.autoboot.Data), len(want))
	}
	if string(r.autoboot.Data) == want {
		return nil
	}
	dev := partDev(disk, 1)
	pos := int64(0)
	var blocks []block
	for _, x := range r.autoboot.Extents {
		blocks = append(blocks, block{Off: x.Off, Data: []byte(want[pos : pos+x.Len])})
		pos += x.Len
	}
	if err := r.d.writeBlocks(ctx, dev, blocks); err != nil {
		return fmt.Errorf("rewrite autoboot.txt: %w", err)
	}
	for _, b := range blocks {
		got, err := r.d.readAt(ctx, dev, b.Off, int64(len(b.Data)))
		if err != nil {
			return fmt.Errorf("read back autoboot.txt: %w", err)
		}
		if !bytes.Equal(got, b.Data) {
			return fmt.Errorf("read back autoboot.txt: content differs")
		}
	}
	r.autoboot.Data = []byte(want)
	return nil
}

func (o *UpdateOptions) defaults() {
	if o.Disk == "" {
		o.Disk = "/dev/mmcblk0"
	}
	if o.Health == "" {
		o.Health = "true"
	}
	if o.HealthTimeout == 0 {
		o.HealthTimeout = 60 * time.Second
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 120 * time.Second
	}
	if o.TrialGrace == 0 {
		o.TrialGrace = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
}

// Update installs the image at path (an .img with kiln's A/B layout) on the
// device's inactive slot, proves the write by hashing it on the device,
// trial-boots it, runs the health check and commits — or rolls back.
// It returns ErrRolledBack (wrapped) when the device ended on its old slot.
func Update(ctx context.Context, dial Dialer, name, path string, opts UpdateOptions) (*UpdateResult, error) {
	opts.defaults()
	start := time.Now()
	res := &UpdateResult{Device: name}
	defer func() { res.DurationSec = time.Since(start).Seconds() }()

	img, err := openImage(path)
	if err != nil {
		return res, err
	}
	defer img.f.Close()
	res.Derivation = img.layout.Derivation
	srcBoot, srcRoot, err := img.sourceSlot(path)
	if err != nil {
		return res, err
	}

	c, rem, err := connect(ctx, dial, opts.Disk)
	if err != nil {
		return res, err
	}
	defer func() { c.Close() }()
	d := rem.d
	// One update at a time: the lock lives in /run until the trial reboot.
	host, _ := os.Hostname()
	owner := fmt.Sprintf("kiln on %s, pid %d, since %s", host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	if err := d.lock(ctx, owner); err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		d.unlock(uctx, owner)
		cancel()
	}()
	if rem.running != rem.committed && rem.uptime >= 0 && rem.uptime < opts.TrialGrace.Seconds() {
		// A young trial boot without a lock: its updater may be reconnecting
		// after the trial reboot (before it re-takes the lock).
		return res, fmt.Errorf("%s: %w: slot %s is in a trial boot %.0f s old; its update may still be reconnecting (retry after %v)",
			name, ErrBusy, rem.running.Name, rem.uptime, opts.TrialGrace)
	}
	if rem.running != rem.committed {
		// A trial from an earlier, interrupted update: go back to the committed slot first.
		opts.Log("%s: running uncommitted slot %s; rebooting to committed slot %s", name, rem.running.Name, rem.committed.Name)
		if c, rem, err = rebootAndWait(ctx, dial, c, rem, opts, ""); err != nil {
			return res, err
		}
		d = rem.d
		if rem.running != rem.committed {
			return res, fmt.Errorf("%s: still not on the committed slot after a reboot", name)
		}
		if err := d.lock(ctx, owner); err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
	}
	target := rem.layout.Slots[0]
	if target == rem.committed {
		target = rem.layout.Slots[1]
	}
	res.From, res.To = rem.committed.Name, target.Name
	tBoot, ok1 := partByNum(rem.parts, target.Boot)
	tRoot, ok2 := partByNum(rem.parts, target.Root)
	if !ok1 || !ok2 {
		return res, fmt.Errorf("%s: %w: slot %s partitions missing", name, ErrLayout, target.Name)
	}
	if srcBoot.Size > tBoot.Size || srcRoot.Size > tRoot.Size {
		return res, fmt.Errorf("%s: the image's slot (boot %d, root %d bytes) does not fit the device's slot %s (boot %d, root %d bytes)",
			name, srcBoot.Size, srcRoot.Size, target.Name, tBoot.Size, tRoot.Size)
	}

	boot, err := img.slotBoot(path, srcBoot, srcRoot, tRoot.PartUUID)
	if err != nil {
		return res, err
	}

	if err := d.installHelper(ctx, opts.HelperDir, opts.Log); err != nil {
		return res, err
	}
	res.UsedHelper = d.helper != ""
	writeStart := time.Now()
	root := io.NewSectionReader(img.f, srcRoot.Start, srcRoot.Size)
	if res.RootSHA256, err = writeVerified(ctx, d, partDev(opts.Disk, target.Root), root, srcRoot.Size, "root", opts); err != nil {
		return res, err
	}
	if res.BootSHA256, err = writeVerified(ctx, d, partDev(opts.Disk, target.Boot), bytes.NewReader(boot), srcBoot.Size, "boot", opts); err != nil {
		return res, err
	}
	res.BytesImage = srcRoot.Size + srcBoot.Size
	res.WriteSec = time.Since(writeStart).Seconds()
	res.BytesSent = d.sent

	// Arm the one-shot trial boot of the new slot.
	if err := rem.setAutoboot(ctx, opts.Disk, rem.committed.Boot, target.Boot); err != nil {
		return res, err
	}
	opts.Log("%s: slot %s written and verified on the device; trial boot", name, target.Name)
	c, trial, err := rebootAndWait(ctx, dial, c, rem, opts, "0 tryboot")
	if err != nil {
		return res, err
	}
	if err := d.lock(ctx, owner); err != nil {
		opts.Log("%s: trial boot: %v", name, err)
	}
	rollback := func(reason string) (*UpdateResult, error) {
		res.RolledBack, res.Reason = true, reason
		opts.Log("%s: %s; rolling back to slot %s", name, reason, rem.committed.Name)
		var back *remote
		var err error
		if trial.running != rem.committed {
			// Even when kiln itself is being stopped: a robot must not be
			// left running a slot that never passed its health check.
			if c, back, err = rebootAndWait(context.WithoutCancel(ctx), dial, c, trial, opts, ""); err != nil {
				return res, fmt.Errorf("%s: %s, and the rollback reboot failed: %w", name, reason, err)
			}
			if back.running != rem.committed {
				return res, fmt.Errorf("%s: %s, and after the rollback it runs slot %s", name, reason, back.running.Name)
			}
		}
		return res, fmt.Errorf("%s: %s: %w (device is on slot %s)", name, reason, ErrRolledBack, rem.committed.Name)
	}
	if trial.running != target {
		return rollback(fmt.Sprintf("trial boot came up on slot %s, not %s", trial.running.Name, target.Name))
	}
	hctx, cancel := context.WithTimeout(ctx, opts.HealthTimeout)
	err = c.Run(hctx, opts.Health, nil, io.Discard)
	cancel()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return rollback(fmt.Sprintf("update interrupted during the health check (%v)", ctx.Err()))
		case errors.Is(err, context.DeadlineExceeded):
			return rollback(fmt.Sprintf("health check did not finish in %v", opts.HealthTimeout))
		}
		return rollback(fmt.Sprintf("health check failed: %v", err))
	}
	if err := trial.setAutoboot(ctx, opts.Disk, target.Boot, rem.committed.Boot); err != nil {
		// The rewrite may have landed although its answer did not.
		opts.Log("%s: commit: %v; reconnecting to see whether it landed", name, err)
		if c, err = confirmCommit(ctx, dial, c, trial, target, rem.committed, opts); err != nil {
			res.RolledBack = errors.Is(err, ErrRolledBack)
			return res, fmt.Errorf("%s: commit: %w", name, err)
		}
	}
	res.Committed = true
	res.BytesSent = trial.d.sent
	opts.Log("%s: committed slot %s", name, target.Name)
	return res, nil
}

// writeVerified writes n bytes from r to dev (only changed blocks when the
// device can hash them) and returns the device's hash of the range, which
// must equal the image's.
func writeVerified(ctx context.Context, d *device, dev string, r io.ReaderAt, n int64, phase string, opts UpdateOptions) (string, error) {
	progress := func(done int64) { opts.Progress.Report(phase, done, n) }
	helperDelta := !opts.NoDelta && d.helper != ""
	stockDelta := !opts.NoDelta && d.helper == ""
	// Stock tools hash a block per dd | sha256sum pair of processes (about
	// 4 ms each here): at 4 KiB blocks that is minutes for a 256 MiB slot,
	// longer than sending it whole. At 1 MiB it is 256 pairs.
	bs := opts.BlockSize
	switch {
	case bs != 0:
	case stockDelta:
		bs = 1 << 20
	default:
		bs = 4 << 10
	}
	var sums []uint64
	if helperDelta {
		// The helper needs the new block sums before it starts reading;
		// they take a fraction of the time SHA-256 does.
		var err error
		if sums, err = blockSums(r, n, bs); err != nil {
			return "", err
		}
	}
	// The image's hash (and, for stock tools, its block hashes) is computed
	// while the device works.
	lc := make(chan localHashes, 1)
	go func() { lc <- hashLocal(r, n, bs, stockDelta) }()
	local := sync.OnceValue(func() localHashes { return <-lc })

	var got string
	var err error
	switch {
	case helperDelta:
		var k int
		if got, k, err = d.deltaWrite(ctx, dev, r, n, bs, sums, progress); err == nil {
			opts.Log("%s: %d of %d blocks differ", dev, k, len(sums))
		}
	case stockDelta:
		var dsums [][32]byte
		if dsums, err = d.blockHashes(ctx, dev, 0, n, bs); err != nil {
			break
		}
		if l := local(); l.err != nil {
			err = l.err
		} else if err = d.writeChanged(ctx, dev, r, n, bs, dsums, l.blocks, opts.Log); err == nil {
			got, err = d.hash(ctx, dev, 0, n)
		}
	default:
		if err = d.write(ctx, dev, 0, &progressReader{r: io.NewSectionReader(r, 0, n), fn: progress}); err == nil {
			got, err = d.hash(ctx, dev, 0, n)
		}
	}
	l := local()
	if err != nil {
		return "", err
	}
	if l.err != nil {
		return "", l.err
	}
	if got != l.sum {
		return got, fmt.Errorf("%s: device sha256 %s, image %s: %w", dev, got, l.sum, errVerify)
	}
	progress(n)
	return got, nil
}

// progressReader reports how much has been read from r.
type progressReader struct {
	r    io.Reader
	n    int64
	fn   func(int64)
	last time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	k, err := p.r.Read(b)
	p.n += int64(k)
	if now := time.Now(); now.Sub(p.last) > 100*time.Millisecond || err != nil {
		p.fn(p.n)
		p.last = now
	}
	return k, err
}

// localHashes is the image side of a write: the range's SHA-256 and, for
// stock-tools deltas, the SHA-256 of every block.
type localHashes struct {
	sum    string
	blocks [][32]byte
	err    error
}

// hashLocal reads r's n bytes once for the whole hash and, if blocks is
// set, the hash of every bs-byte block.
func hashLocal(r io.ReaderAt, n, bs int64, blocks bool) localHashes {
	var l localHashes
	h := sha256.New()
	l.err = eachChunk(r, n, bs, func(b []byte) {
		h.Write(b)
		for o := int64(0); blocks && o < int64(len(b)); o += bs {
			l.blocks = append(l.blocks, sha256.Sum256(b[o:min(o+bs, int64(len(b)))]))
		}
	})
	l.sum = hex.EncodeToString(h.Sum(nil))
	return l
}

// blockSums returns devhelper.BlockSum of every bs-byte block of r's n bytes.
func blockSums(r io.ReaderAt, n, bs int64) ([]uint64, error) {
	sums := make([]uint64, 0, (n+bs-1)/bs)
	err := eachChunk(r, n, bs, func(b []byte) {
		for o := int64(0); o < int64(len(b)); o += bs {
			sums = append(sums, devhelper.BlockSum(b[o:min(o+bs, int64(len(b)))]))
		}
	})
	return sums, err
}

// eachChunk hands r's n bytes to fn in pieces of about 1 MiB that start on
// bs boundaries.
func eachChunk(r io.ReaderAt, n, bs int64, fn func([]byte)) error {
	buf := make([]byte, max(bs, 1<<20-(1<<20)%bs))
	for off := int64(0); off < n; {
		k := min(int64(len(buf)), n-off)
		if _, err := r.ReadAt(buf[:k], off); err != nil {
			return err
		}
		fn(buf[:k])
		off += k
	}
	return nil
}

// ErrCommitUnknown means the commit was sent but the device could not be
// reached to see whether it landed.
var ErrCommitUnknown = errors.New("commit not confirmed")

// confirmCommit reconnects after a commit whose answer was lost and finds
// out what the device holds: committed to target (done), still in the same
// trial boot (commit again), or restarted on the old slot before the commit
// reached the medium (ErrRolledBack). It returns the connection in use.
func confirmCommit(ctx context.Context, dial Dialer, c RunCloser, trial *remote, target, old Slot, opts UpdateOptions) (RunCloser, error) {
	c.Close()
	deadline := time.Now().Add(opts.BootTimeout)
	var last error
	for {
		nc, nr, err := reconnect(ctx, dial, trial, opts)
		switch {
		case err != nil:
			last = err
		case nr.committed == target:
			*trial = *nr
			return nc, nil
		case nr.bootID == trial.bootID && nr.running == target:
			if err := nr.setAutoboot(ctx, opts.Disk, target.Boot, old.Boot); err != nil {
				last = err
				nc.Close()
				break
			}
			*trial = *nr
			return nc, nil
		default:
			return nc, fmt.Errorf("the device restarted on slot %s before the commit reached it: %w", nr.running.Name, ErrRolledBack)
		}
		if !time.Now().Before(deadline) {
			return c, fmt.Errorf("%w: device unreachable for %v after the commit was sent (last: %v); `kiln fleet status` shows the slot it runs", ErrCommitUnknown, opts.BootTimeout, last)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return c, fmt.Errorf("%w: %v", ErrCommitUnknown, ctx.Err())
		}
	}
}

// connect dials the device and inspects it.
func connect(ctx context.Context, dial Dialer, disk string) (RunCloser, *remote, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	rem, err := inspect(ctx, &device{r: c}, disk)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, rem, nil
}

// reconnect opens a new connection and inspects the device again. The new
// remote shares rem's device record, so the helper it verified and the
// bytes sent carry over.
func reconnect(ctx context.Context, dial Dialer, rem *remote, opts UpdateOptions) (RunCloser, *remote, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	nc, err := dial(dctx)
	cancel()
	if err != nil {
		return nil, nil, err
	}
	nd := &device{r: nc, helper: rem.d.helper, hsum: rem.d.hsum, sent: rem.d.sent}
	nr, err := inspect(ctx, nd, opts.Disk)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	*rem.d = *nd
	nr.d = rem.d
	return nc, nr, nil
}

// rebootAndWait reboots the device (arg "" or "0 tryboot"), waits for a new
// boot and reconnects.
func rebootAndWait(ctx context.Context, dial Dialer, c RunCloser, rem *remote, opts UpdateOptions, arg string) (RunCloser, *remote, error) {
	cmd := "reboot"
	if arg != "" {
		cmd += " " + quote(arg)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.Run(rctx, cmd, nil, nil)
	cancel()
	if err != nil && !errors.Is(err, ErrConnLost) && !errors.Is(err, context.DeadlineExceeded) {
		return c, nil, fmt.Errorf("reboot: %w", err)
	}
	c.Close()
	deadline := time.Now().Add(opts.BootTimeout)
	var last error
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return c, nil, err
		}
		nc, nr, err := reconnect(ctx, dial, rem, opts)
		switch {
		case err != nil:
			last = err
		case nr.bootID != rem.bootID:
			return nc, nr, nil
		default:
			nc.Close()
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return c, nil, ctx.Err()
		}
	}
	return c, nil, fmt.Errorf("device did not come back within %v after reboot (last: %v)", opts.BootTimeout, last)
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
func Inspect(ctx context.Context, dial Dialer, name, disk string) (*Status, error) {
	if disk == "" {
		disk = "/dev/mmcblk0"
	}
	c, rem, err := connect(ctx, dial, disk)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	d := rem.d
	st := &Status{Device: name, Running: rem.running.Name, Committed: rem.committed.Name, Trial: rem.running != rem.committed}
	bp, ok := partByNum(rem.parts, rem.running.Boot)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no boot partition %d", name, ErrLayout, rem.running.Boot)
	}
	kj, err := readFATFile(remoteReader(ctx, d, partDev(disk, bp.Number), bp.Size), "kiln.json")
	if err != nil {
		return nil, fmt.Errorf("%s: running slot's kiln.json: %w", name, err)
	}
	var l Layout
	if err := json.Unmarshal(kj.Data, &l); err != nil {
		return nil, fmt.Errorf("%s: running slot's kiln.json: %w", name, err)
	}
	st.Derivation, st.Board = l.Derivation, l.Board
	return st, nil
}

// ImageDerivation returns the derivation hash recorded in an image's kiln.json.
func ImageDerivation(path string) (string, error) {
	img, err := openImage(path)
	if err != nil {
		return "", err
	}
	defer img.f.Close()
	return img.layout.Derivation, nil
}

// ImageLayout returns an A/B image's kiln.json (its board, derivation and
// slots).
func ImageLayout(path string) (*Layout, error) {
	img, err := openImage(path)
	if err != nil {
		return nil, err
	}
	defer img.f.Close()
	l := img.layout
	return &l, nil
}

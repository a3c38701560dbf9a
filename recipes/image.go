package recipes

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/image"
)

// ImageSpec is the [image] table of a recipe of kind "image": a partition
// table, its partitions and what goes into them, an optional initramfs and
// the Raspberry Pi boot files kiln generates.
type ImageSpec struct {
	Table string `toml:"table" json:"table"` // "mbr" or "gpt"
	// Size is the disk size: bytes, or "256MiB", "1GiB".
	Size            Size             `toml:"size" json:"size"`
	SourceDateEpoch int64            `toml:"source_date_epoch" json:"source_date_epoch"`
	Partitions      []ImagePartition `toml:"partitions" json:"partitions"`
	Initramfs       *ImageInitramfs  `toml:"initramfs" json:"initramfs,omitempty"`
	RPi             *ImageRPi        `toml:"rpi" json:"rpi,omitempty"`
	// Rootfs is a root filesystem from Debian packages (see ImageRootfs).
	Rootfs *ImageRootfs `toml:"rootfs" json:"rootfs,omitempty"`
}

// ImagePartition is one [[image.partitions]] entry.
type ImagePartition struct {
	Name     string `toml:"name" json:"name"`
	FS       string `toml:"fs" json:"fs"` // fat32, squashfs, ext4, raw
	Start    Size   `toml:"start" json:"start,omitempty"`
	Size     Size   `toml:"size" json:"size"`
	Bootable bool   `toml:"bootable" json:"bootable,omitempty"`
	Label    string `toml:"label" json:"label,omitempty"`
	// Compression is a squashfs partition's: zstd (the default for
	// contents), gzip or xz (the default for the Debian root).
	Compression string `toml:"compression" json:"compression,omitempty"`
	// Slot names the A/B slot ("a", "b") this boot or root partition belongs to.
	Slot string `toml:"slot" json:"slot,omitempty"`
	// Contents copy files in: From is "src:PATH" (a recipe file or directory,
	// which the recipe's files globs must cover), "<input>:PATH" (inside an
	// input), "initramfs" (the image's generated initramfs) or "rootfs" (the
	// root filesystem [image.rootfs] assembles, to "/": the partition's
	// other contents and its derivation file are laid over it).
	Contents []ImageContent `toml:"contents" json:"contents,omitempty"`
	// DerivationFile, if set, is a path in this filesystem that receives
	// the image's derivation hash.
	DerivationFile string `toml:"derivation_file" json:"derivation_file,omitempty"`
}

// ImageContent copies From to To (a path inside the filesystem; "/" or ""
// for a directory's content at the root).
type ImageContent struct {
	From string `toml:"from" json:"from"`
	To   string `toml:"to" json:"to"`
}

// ImageInitramfs is a newc+gzip initramfs made from Contents; Devices adds
// character devices (["dev/console:5:1"]).
type ImageInitramfs struct {
	Contents []ImageContent `toml:"contents" json:"contents"`
	Devices  []string       `toml:"devices" json:"devices,omitempty"`
}

// ImageRPi asks for the Raspberry Pi boot files: config.txt and cmdline.txt
// in every boot partition (each naming its own slot's root by PARTUUID) and,
// when Autoboot names a partition, kiln.json (the slot table the updater
// reads) there.
//
// AB picks who decides which slot boots; it must be one the board's
// firmware has (boards.Board.HasAB). With AB set, kiln puts exactly the
// board's boot files on the card: the firmware files of the Firmware input
// (Debian's raspi-firmware) and a config.txt kiln writes for the board,
// followed by the recipe's Config lines.
//   - "tryboot" (Pi 4 family): Autoboot holds autoboot.txt; each slot's boot
//     partition holds the firmware, config.txt (kernel=Kernel,
//     device_tree=the board's DTB, initramfs), the kernel, device tree and
//     initramfs.
//   - "uboot-env" (Pi 3-class): Autoboot holds the firmware, config.txt
//     starting U-Boot (the UBoot input's u-boot.bin for the board's platform)
//     as the kernel, the board's device tree from DTBs, boot.scr and
//     uboot.env; U-Boot's boot.scr loads Kernel, the device tree and
//     Initramfs from the slot's boot partition.
//
// Without AB (test images with no firmware) Autoboot gets autoboot.txt and
// Config is written as given.
type ImageRPi struct {
	Config   []string `toml:"config" json:"config"`               // config.txt lines
	Cmdline  string   `toml:"cmdline" json:"cmdline"`             // kernel arguments; root=PARTUUID=… is appended
	Autoboot string   `toml:"autoboot" json:"autoboot"`           // partition the firmware reads first, holding kiln.json
	AB       string   `toml:"ab" json:"ab,omitempty"`             // boards.ABTryboot or boards.ABUBootEnv
	Firmware string   `toml:"firmware" json:"firmware,omitempty"` // input with usr/lib/raspi-firmware
	UBoot    string   `toml:"uboot" json:"uboot,omitempty"`       // input with usr/lib/u-boot/<platform>/u-boot.bin
	DTBs     string   `toml:"dtbs" json:"dtbs,omitempty"`         // "<input>:DIR" holding the board's device tree
	// Kernel and Initramfs name the files in each slot's boot partition
	// (default kernel8.img; no initramfs when empty).
	Kernel    string `toml:"kernel" json:"kernel,omitempty"`
	Initramfs string `toml:"initramfs" json:"initramfs,omitempty"`
	// Bootlimit is how many times U-Boot boots a trial slot that was not
	// marked good before it returns to the fallback (1 to 9; default 3).
	Bootlimit int `toml:"bootlimit" json:"bootlimit,omitempty"`
}

// KernelFile is the slot's kernel file name.
func (r *ImageRPi) KernelFile() string {
	if r.Kernel == "" {
		return "kernel8.img"
	}
	return r.Kernel
}

// BootLimit is Bootlimit or its default.
func (r *ImageRPi) BootLimit() int {
	if r.Bootlimit == 0 {
		return 3
	}
	return r.Bootlimit
}

// generatedConfigKeys are config.txt settings kiln writes itself when AB is
// set; a recipe's Config may not set them again.
var generatedConfigKeys = []string{"kernel", "device_tree", "initramfs", "arm_64bit", "cmdline", "os_prefix", "start_file", "fixup_file"}

func (r *ImageRPi) validate(rec *Recipe, inputs map[string]bool, names map[string]bool) error {
	if r.AB == "" {
		return nil
	}
	b, err := boards.Get(rec.Board)
	if err != nil {
		return err
	}
	if err := b.HasAB(r.AB); err != nil {
		return fmt.Errorf("rpi.ab: %w", err)
	}
	if r.Autoboot == "" || !names[r.Autoboot] {
		return fmt.Errorf("rpi.ab = %q needs rpi.autoboot naming the first partition", r.AB)
	}
	need := map[string]string{"firmware": r.Firmware}
	if r.AB == boards.ABUBootEnv {
		need["uboot"] = r.UBoot
		in, _, _ := strings.Cut(r.DTBs, ":")
		need["dtbs"] = in
		if r.Bootlimit < 0 || r.Bootlimit > 9 {
			return fmt.Errorf("rpi.bootlimit %d: want 1 to 9 (boot.scr counts in one hex digit)", r.Bootlimit)
		}
	}
	for field, in := range need {
		if in == "" || !inputs[in] {
			return fmt.Errorf("rpi.%s must name a declared input (got %q)", field, in)
		}
	}
	for _, f := range []string{r.Kernel, r.Initramfs} {
		if strings.ContainsAny(f, "/\\ ") || f == "." || f == ".." {
			return fmt.Errorf("rpi: %q is not a plain file name", f)
		}
	}
	for _, line := range r.Config {
		key := strings.TrimSpace(line)
		if k, _, ok := strings.Cut(key, "="); ok {
			key = k
		} else {
			key, _, _ = strings.Cut(key, " ")
		}
		for _, g := range generatedConfigKeys {
			if strings.TrimSpace(key) == g {
				return fmt.Errorf("rpi.config sets %q, which kiln writes for the board when rpi.ab is set", g)
			}
		}
	}
	return nil
}

// Size is a byte count written as an integer or as "N", "NKiB", "NMiB", "NGiB".
type Size int64

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*(|B|KiB|MiB|GiB|TiB|K|M|G|T)$`)

// UnmarshalTOML accepts an integer or a string with a binary unit.
func (s *Size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		*s = Size(x)
		return nil
	case string:
		n, err := ParseSize(x)
		*s = Size(n)
		return err
	}
	return fmt.Errorf("size %v: want bytes or a string like \"64MiB\"", v)
}

// ParseSize parses "64MiB" and the like (binary units only).
func ParseSize(str string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(str))
	if m == nil {
		return 0, fmt.Errorf("size %q: want a number with KiB, MiB, GiB or TiB", str)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", str, err)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30, "T": 40, "TiB": 40}[m[2]]
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q is too large", str)
	}
	return n << shift, nil
}

func init() { RegisterKind(KindImage, decodeImage) }

func decodeImage(r *Recipe, md *toml.MetaData, ext map[string]toml.Primitive) (any, error) {
	prim, ok := ext["image"]
	if !ok {
		return nil, fmt.Errorf("%w: an image recipe needs an [image] table", ErrInvalid)
	}
	for k := range ext {
		if k != "image" {
			return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, k)
		}
	}
	spec := &ImageSpec{}
	if err := md.PrimitiveDecode(prim, spec); err != nil {
		return nil, fmt.Errorf("%w: image: %v", ErrInvalid, err)
	}
	if err := spec.Validate(r); err != nil {
		return nil, fmt.Errorf("%w: image: %w", ErrInvalid, err)
	}
	return spec, nil
}

// Layout returns the partition layout the spec describes, without contents.
func (s *ImageSpec) Layout(seed string) *image.Layout {
	l := &image.Layout{Table: s.Table, Size: int64(s.Size), Seed: seed, Epoch: s.SourceDateEpoch}
	for _, p := range s.Partitions {
		l.Partitions = append(l.Partitions, &image.Partition{Name: p.Name, FS: p.FS, Start: int64(p.Start),
			Size: int64(p.Size), Bootable: p.Bootable, Label: p.Label, Slot: p.Slot, Compression: p.Compression})
	}
	return l
}

// Validate checks the spec against its recipe: the layout (overlaps,
// exceeding the disk), content sources naming declared inputs, slots.
func (s *ImageSpec) Validate(r *Recipe) error {
	if s.SourceDateEpoch <= 0 {
		return fmt.Errorf("source_date_epoch must be set (seconds since 1970)")
	}
	if err := s.Layout("validate").Resolve(); err != nil {
		return err
	}
	if s.Rootfs != nil {
		if err := s.Rootfs.Request().Validate(); err != nil {
			return err
		}
	}
	inputs := map[string]bool{}
	for _, in := range r.Inputs {
		inputs[in.Name] = true
	}
	rootfsIn := ""
	checkContent := func(where string, c ImageContent, allowInitramfs bool) error {
		if c.From == RootfsContent {
			if s.Rootfs == nil {
				return fmt.Errorf("%s: from = %q needs an [image.rootfs] table", where, RootfsContent)
			}
			if !allowInitramfs {
				return fmt.Errorf("%s: the root filesystem goes into a partition, not the initramfs", where)
			}
			if c.To != "" && c.To != "/" {
				return fmt.Errorf("%s: the root filesystem is the whole partition (to = \"/\"), not %q", where, c.To)
			}
			if rootfsIn != "" {
				return fmt.Errorf("%s: the root filesystem already goes into %s (one partition holds it; an A/B slot b is filled by updates)", where, rootfsIn)
			}
			rootfsIn = where
			return nil
		}
		if c.From == "initramfs" {
			if !allowInitramfs || s.Initramfs == nil {
				return fmt.Errorf("%s: from = \"initramfs\" needs an [image.initramfs] table", where)
			}
			if c.To == "" || c.To == "/" {
				return fmt.Errorf("%s: the initramfs needs a file name (to)", where)
			}
			return nil
		}
		src, p, ok := strings.Cut(c.From, ":")
		if !ok || p == "" {
			return fmt.Errorf("%s: from %q: want src:PATH, <input>:PATH or initramfs", where, c.From)
		}
		if src != "src" && !inputs[src] {
			return fmt.Errorf("%s: from %q names input %q, which the recipe does not declare", where, c.From, src)
		}
		for _, part := range strings.Split(path.Clean("/"+p), "/") {
			if part == ".." {
				return fmt.Errorf("%s: from %q leaves its root", where, c.From)
			}
		}
		return nil
	}
	slots := map[string]map[string]bool{}
	names := map[string]bool{}
	for _, p := range s.Partitions {
		names[p.Name] = true
		for _, c := range p.Contents {
			if err := checkContent("partition "+p.Name, c, true); err != nil {
				return err
			}
			if c.From == RootfsContent && p.FS != image.Squashfs && p.FS != image.Ext4 {
				return fmt.Errorf("partition %s: the root filesystem needs fs = \"squashfs\" or \"ext4\" (got %q)", p.Name, p.FS)
			}
		}
		if p.Slot != "" {
			if slots[p.Slot] == nil {
				slots[p.Slot] = map[string]bool{}
			}
			kind := "root"
			if p.FS == image.FAT32 {
				kind = "boot"
			}
			if slots[p.Slot][kind] {
				return fmt.Errorf("slot %q has two %s partitions", p.Slot, kind)
			}
			slots[p.Slot][kind] = true
		}
	}
	if s.Initramfs != nil {
		for _, c := range s.Initramfs.Contents {
			if err := checkContent("initramfs", c, false); err != nil {
				return err
			}
		}
		for _, d := range s.Initramfs.Devices {
			if _, _, _, err := ParseDevice(d); err != nil {
				return err
			}
		}
	}
	if s.RPi != nil && s.RPi.Autoboot != "" && !names[s.RPi.Autoboot] {
		return fmt.Errorf("rpi.autoboot names partition %q, which the image does not have", s.RPi.Autoboot)
	}
	if s.RPi != nil {
		if err := s.RPi.validate(r, inputs, names); err != nil {
			return err
		}
	}
	for name, kinds := range slots {
		if s.RPi != nil && !kinds["root"] {
			return fmt.Errorf("slot %q has no root partition", name)
		}
	}
	return nil
}

// ParseDevice parses "path:major:minor".
func ParseDevice(d string) (string, uint32, uint32, error) {
	parts := strings.Split(d, ":")
	if len(parts) == 3 {
		maj, err1 := strconv.ParseUint(parts[1], 10, 32)
		min, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 == nil && err2 == nil && parts[0] != "" {
			return parts[0], uint32(maj), uint32(min), nil
		}
	}
	return "", 0, 0, fmt.Errorf("device %q: want PATH:MAJOR:MINOR", d)
}

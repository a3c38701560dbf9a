package image

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Sentinel errors. Each is wrapped with the partition or file it concerns.
var (
	// ErrLayout: partitions overlap, exceed the disk, or are misaligned.
	ErrLayout = errors.New("bad layout")
	// ErrBadName: a name the filesystem cannot hold.
	ErrBadName = errors.New("name the filesystem cannot hold")
	// ErrNoSpace: the content does not fit its partition.
	ErrNoSpace = errors.New("content does not fit")
)

// Filesystem kinds a partition can hold.
const (
	FAT32    = "fat32"
	Squashfs = "squashfs"
	Ext4     = "ext4"
	Raw      = "raw" // no filesystem: zero-filled (an empty A/B slot)
)

// SectorSize is the logical sector size of every image kiln writes.
const SectorSize = 512

// Layout is a whole disk image: a partition table and what each partition
// holds. Seed (the derivation hash) and Epoch (SOURCE_DATE_EPOCH) make it
// reproducible.
type Layout struct {
	Table      string // "mbr" or "gpt"
	Size       int64  // bytes, a multiple of 512
	Seed       string // derivation hash: every ID is derived from it
	Epoch      int64  // SOURCE_DATE_EPOCH: every timestamp
	Partitions []*Partition
}

// Partition is one partition of a Layout.
type Partition struct {
	Name     string // GPT partition name, and how recipes refer to it
	FS       string // fat32, squashfs, ext4 or raw
	Start    int64  // bytes from the start of the disk; 0: right after the previous one, 1 MiB aligned
	Size     int64  // bytes
	Bootable bool   // MBR active flag / GPT legacy BIOS bootable attribute
	Label    string // filesystem label
	Slot     string // A/B slot name ("a", "b") when this is a root slot
	Contents *Tree  // nil: empty filesystem
	// Image is a filesystem image of the partition's kind (squashfs or
	// ext4) made elsewhere, copied in as it is: a Debian root filesystem,
	// whose owners, modes, set-id bits and device nodes a Tree cannot
	// hold. Contents must be nil when it is set.
	Image string
	// Compression is a squashfs partition's compression, one of
	// SquashfsCompressions ("": DefaultSquashfsCompression for a Tree; the
	// maker of Image chose its own). Other filesystems have none.
	Compression string
}

const mib = 1 << 20

// Resolve fills in automatic starts and checks the layout: a known table,
// partitions inside the usable area, no overlaps, sizes and starts in whole
// sectors. Errors wrap ErrLayout.
func (l *Layout) Resolve() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("image: %s: %w", fmt.Sprintf(format, a...), ErrLayout)
	}
	if l.Table != "mbr" && l.Table != "gpt" {
		return bad("partition table %q: want mbr or gpt", l.Table)
	}
	if l.Size <= 0 || l.Size%SectorSize != 0 {
		return bad("disk size %d is not a positive multiple of %d", l.Size, SectorSize)
	}
	if len(l.Partitions) == 0 {
		return bad("no partitions")
	}
	if l.Table == "mbr" && len(l.Partitions) > 60 {
		return bad("mbr layout has %d partitions, kiln writes at most 60", len(l.Partitions))
	}
	if l.Table == "gpt" && len(l.Partitions) > 128 {
		return bad("gpt holds at most 128 partitions")
	}
	first, last := int64(SectorSize), l.Size // usable [first, last)
	if l.Table == "gpt" {
		first, last = 34*SectorSize, l.Size-33*SectorSize
	}
	if l.Table == "mbr" && l.Size/SectorSize > 1<<32 {
		return bad("disk of %d bytes is too large for mbr", l.Size)
	}
	next := int64(mib)
	names := map[string]bool{}
	for i, p := range l.Partitions {
		if p.Name == "" {
			return bad("partition %d has no name", i+1)
		}
		if names[p.Name] {
			return bad("partition name %q used twice", p.Name)
		}
		names[p.Name] = true
		switch p.FS {
		case FAT32, Squashfs, Ext4, Raw:
		default:
			return bad("partition %s: filesystem %q: want fat32, squashfs, ext4 or raw", p.Name, p.FS)
		}
		if p.Compression != "" && (p.FS != Squashfs || !slices.Contains(SquashfsCompressions, p.Compression)) {
			return bad("partition %s: compression %q: a squashfs partition's is one of %s", p.Name, p.Compression, strings.Join(SquashfsCompressions, ", "))
		}
		if p.Image != "" && (p.Contents != nil || (p.FS != Squashfs && p.FS != Ext4)) {
			return bad("partition %s: a prebuilt filesystem image goes into a squashfs or ext4 partition with no other contents", p.Name)
		}
		logical := l.logical(i)
		if p.Start == 0 {
			if logical {
				next += SectorSize // room for the partition's EBR
			}
			p.Start = (next + mib - 1) / mib * mib
		}
		if p.Size <= 0 || p.Size%SectorSize != 0 || p.Start%SectorSize != 0 {
			return bad("partition %s: start %d and size %d must be positive multiples of %d", p.Name, p.Start, p.Size, SectorSize)
		}
		if p.Start < first {
			return bad("partition %s starts at byte %d, inside the partition table", p.Name, p.Start)
		}
		if logical && p.Start-SectorSize < next {
			return bad("logical partition %s needs a free sector before it for its EBR", p.Name)
		}
		if p.Start+p.Size > last {
			return bad("partition %s (bytes %d-%d) exceeds the disk (usable up to %d)", p.Name, p.Start, p.Start+p.Size, last)
		}
		next = p.Start + p.Size
	}
	idx := make([]*Partition, len(l.Partitions))
	copy(idx, l.Partitions)
	sort.Slice(idx, func(i, j int) bool { return idx[i].Start < idx[j].Start })
	for i := 1; i < len(idx); i++ {
		a, b := idx[i-1], idx[i]
		if a.Start+a.Size > b.Start || (l.logical(indexOf(l.Partitions, b)) && a.Start+a.Size > b.Start-SectorSize) {
			return bad("partitions %s and %s overlap", a.Name, b.Name)
		}
	}
	return nil
}

// logical reports whether partition i (0-based) is an MBR logical
// partition: an MBR layout of more than four partitions keeps three primary
// ones and puts the rest in an extended partition (the fourth entry), in
// the order given.
func (l *Layout) logical(i int) bool {
	return l.Table == "mbr" && len(l.Partitions) > 4 && i >= 3
}

// Number is partition i's (0-based) number as Linux and the Raspberry Pi
// firmware count: 1–4 for primary partitions, 5 and up for logical ones.
func (l *Layout) Number(i int) int {
	if l.logical(i) {
		return i + 2
	}
	return i + 1
}

func indexOf(ps []*Partition, p *Partition) int {
	for i, q := range ps {
		if q == p {
			return i
		}
	}
	return -1
}

// PartUUID returns the PARTUUID Linux and the Raspberry Pi firmware see for
// partition i (0-based): "dddddddd-NN" for MBR, the partition GUID for GPT.
func (l *Layout) PartUUID(i int) string {
	if l.Table == "mbr" {
		return fmt.Sprintf("%08x-%02x", l.DiskID(), l.Number(i))
	}
	return DeriveUUID(l.Seed, fmt.Sprintf("gpt-partition-%d", i+1))
}

// DiskID is the MBR disk signature.
func (l *Layout) DiskID() uint32 { return DeriveUint32(l.Seed, "mbr-disk-id") }

// DiskGUID is the GPT disk GUID.
func (l *Layout) DiskGUID() string { return DeriveUUID(l.Seed, "gpt-disk") }

// FSUUID is the filesystem UUID of partition i (ext4).
func (l *Layout) FSUUID(i int) string { return DeriveUUID(l.Seed, fmt.Sprintf("fs-uuid-%d", i+1)) }

// VolumeID is the FAT volume serial of partition i.
func (l *Layout) VolumeID(i int) uint32 {
	return DeriveUint32(l.Seed, fmt.Sprintf("fat-volume-id-%d", i+1))
}

package ab

import (
	"fmt"
	"io"

	"kiln.dev/kiln/image/disk"
)

// Image is an A/B image on the host: what an update writes is its first
// slot's boot and root partitions.
type Image struct {
	Name       string
	Layout     *disk.Metadata
	Boot, Root disk.Partition
	r          io.ReaderAt
}

// ReadImage reads the table and kiln.json of the size-byte image r. The
// update reads every byte it writes from r: the caller opens the artifact
// once and hands the same handle to the hash check and here.
func ReadImage(name string, r io.ReaderAt, size int64) (*Image, error) {
	rd := disk.FromReaderAt(r, size)
	tbl, err := disk.ReadTable(rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for _, p := range tbl.Partitions {
		if p.End() > size {
			return nil, fmt.Errorf("%s: truncated: partition %d ends at byte %d, the file has %d", name, p.Number, p.End(), size)
		}
	}
	p1, ok := tbl.Partition(1)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no partition 1", name, ErrLayout)
	}
	img := &Image{Name: name, r: r}
	var ab [2]disk.Slot
	if img.Layout, err = disk.ReadMetadata(disk.Sub(rd, p1)); err == nil {
		ab, err = img.Layout.ABSlots()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w: partition 1 has no kiln.json with two slots (%v)", name, ErrLayout, err)
	}
	boot, ok1 := tbl.Partition(ab[0].Boot)
	root, ok2 := tbl.Partition(ab[0].Root)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("%s: %w: slot %s partitions missing", name, ErrLayout, ab[0].Name)
	}
	img.Boot, img.Root = boot, root
	return img, nil
}

// RootReader reads the root partition.
func (img *Image) RootReader() io.ReaderAt {
	return io.NewSectionReader(img.r, img.Root.Start, img.Root.Size)
}

// SlotBoot returns the image's boot partition as an update writes it to a
// device slot: cmdline.txt names the device's root partition by its
// PARTUUID.
func (img *Image) SlotBoot(rootPartUUID string) ([]byte, error) {
	boot := make([]byte, img.Boot.Size)
	if _, err := img.r.ReadAt(boot, img.Boot.Start); err != nil {
		return nil, fmt.Errorf("%s: boot partition: %w", img.Name, err)
	}
	cl, err := disk.ReadFile(disk.FromBytes(boot), "cmdline.txt", 64<<10)
	if err != nil {
		return nil, fmt.Errorf("%s: boot partition: %w", img.Name, err)
	}
	writes, _, err := cl.Patch("PARTUUID="+img.Root.PartUUID, "PARTUUID="+rootPartUUID)
	if err != nil {
		return nil, fmt.Errorf("%s: cmdline.txt: %w", img.Name, err)
	}
	for off, b := range writes {
		copy(boot[off:], b)
	}
	return boot, nil
}

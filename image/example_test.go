package image_test

import (
	"fmt"

	"kiln.dev/kiln/image"
)

// Every identity in an image is derived from the derivation hash, so the
// PARTUUIDs written into cmdline.txt are known before the image is built.
func ExampleLayout_PartUUID() {
	l := &image.Layout{Table: "mbr", Size: 256 << 20, Seed: "f53221ea1eb0355451e0cc1f8539103e89087b1cf8da76abcc416a5b9c7540d5",
		Partitions: []*image.Partition{
			{Name: "boot", FS: image.FAT32, Size: 64 << 20},
			{Name: "root-a", FS: image.Squashfs, Size: 64 << 20},
			{Name: "root-b", FS: image.Raw, Size: 64 << 20},
			{Name: "data", FS: image.Ext4, Size: 32 << 20},
			{Name: "spare", FS: image.Raw, Size: 16 << 20},
		}}
	if err := l.Resolve(); err != nil {
		fmt.Println(err)
		return
	}
	for i, p := range l.Partitions {
		fmt.Printf("%d %-6s start %3d MiB  PARTUUID=%s\n", l.Number(i), p.Name, p.Start>>20, l.PartUUID(i))
	}
	// Output:
	// 1 boot   start   1 MiB  PARTUUID=0ba4bc5d-01
	// 2 root-a start  65 MiB  PARTUUID=0ba4bc5d-02
	// 3 root-b start 129 MiB  PARTUUID=0ba4bc5d-03
	// 5 data   start 194 MiB  PARTUUID=0ba4bc5d-05
	// 6 spare  start 227 MiB  PARTUUID=0ba4bc5d-06
}

// Package image builds reproducible SD-card images: an MBR or GPT partition
// table, FAT32 boot partitions, squashfs and ext4 root and data partitions,
// a newc cpio initramfs, a parallel multi-block .xz and a bmaptool 2.0 block
// map.
//
// Everything that would normally be random or taken from the clock is derived
// instead: the disk signature, GPT GUIDs, FAT volume IDs, filesystem UUIDs and
// hash seeds come from a seed (the derivation hash) via [DeriveID], and every
// timestamp is the layout's SOURCE_DATE_EPOCH. Two builds of the same layout
// from the same inputs are byte-identical.
//
// Partition tables are written with github.com/diskfs/go-diskfs, with kiln's
// corrections on top (the MBR disk signature). FAT32 is kiln's own writer:
// go-diskfs v1.9.4 gets subdirectory ".." entries, the FSInfo free count and
// the hidden-sector count wrong. squashfs is made by mksquashfs
// (squashfs-tools, which compresses on every core; go-diskfs's writer is
// single-threaded and took several times as long) and ext4 by Debian's
// mke2fs, pinned host tools named in the build report, with every time
// pinned (and, for ext4, a fixed UUID, hash seed and E2FSPROGS_FAKE_TIME).
//
// Output bytes are tracked as they are written, so the .img is written sparse
// and the .bmap lists exactly the blocks kiln wrote, independent of the host
// filesystem's hole handling.
package image

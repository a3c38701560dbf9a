// Package disk reads the on-disk formats kiln meets in SD-card images and on
// devices: MBR (with EBR logical partitions) and GPT partition tables, files
// in a FAT root directory, kiln.json (the image's metadata and A/B slots) and
// bmaptool block maps, checked against the image while it streams.
//
// Every parser here reads input kiln does not control (a downloaded image,
// the answer of a device that may be hostile) and is written for it: sizes
// and counts are checked before anything is allocated, memory is bounded,
// a malformed input is an error that names what is wrong, never a panic.
// Each has a fuzz target.
//
// The same code serves `kiln image inspect` (package image), the SSH update
// path (flash/ssh, flash/ab) and the image builder's metadata (recipebuild):
// there is one reader of each format.
package disk

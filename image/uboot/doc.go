// Package uboot holds the two U-Boot formats kiln writes into Raspberry Pi
// images for A/B updates decided by U-Boot: the environment (the
// uboot.env file U-Boot keeps on the boot partition, the format fw_printenv
// and fw_setenv read and write) and the legacy script image (boot.scr, what
// `mkimage -T script` makes from a boot.cmd).
//
// Environment: a little-endian CRC-32 (zlib's) over the whole data area,
// then name=value pairs each ended by a NUL, the list ended by a second NUL,
// zero padding to the environment's size (0x4000 for Debian's u-boot-rpi).
// Like U-Boot's own saveenv, Encode sorts the names, so equal environments
// are byte-identical.
//
// Script image: a 64-byte big-endian legacy image header (magic 0x27051956,
// header and data CRCs, time, type "script"), a zero-terminated list of
// big-endian lengths (one for a script), then the script text. The time is
// the caller's SOURCE_DATE_EPOCH, as mkimage does when that is set, so the
// result is byte-identical to mkimage's.
package uboot

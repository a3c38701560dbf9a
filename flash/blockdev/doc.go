// Package blockdev writes disk images to a local block device, an SD card
// in a USB reader (`kiln flash --port /dev/sdX IMAGE`): what rpi-imager,
// bmaptool and Etcher do, with the write proven.
//
// Write refuses before a byte goes out: a device that is mounted or holds a
// mounted partition, the disk the running system lives on (the one holding
// "/"), a device smaller than the image, and a non-removable disk unless
// forced. It then streams the image (.img, or .img.xz read in parallel
// blocks) through its bmap, writing only the mapped ranges (holes are
// skipped) with O_DIRECT; every range is checked against the bmap's
// checksum as it passes, and the whole image is hashed on the way (the
// artifact's full SHA-256, holes included, goes into the report). After an
// fsync and a flush of the device's buffer cache (BLKFLSBUF) it reads every
// written range back with O_DIRECT and compares SHA-256: a difference is
// flash.ErrVerify (exit 3). Finally it asks the kernel to re-read the
// partition table (BLKRRPART) so the new partitions appear.
package blockdev

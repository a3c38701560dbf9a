// Package ssh writes images to Raspberry Pi devices in the field over SSH and
// proves every write with a hash computed on the device.
//
// Two kinds of work:
//
//   - Whole-device writes (WriteDevice): a disk image, streamed and bmap-aware,
//     to a block device such as a card reader on a provisioning host; then the
//     device's own SHA-256 of exactly the written length, read with O_DIRECT
//     past the page cache, is compared with the image's.
//
//   - A/B updates of a running device (Update): the inactive slot (a boot
//     partition and a root partition) is written and hashed on the device, a
//     one-shot trial boot is armed (the Raspberry Pi firmware's autoboot.txt
//     [tryboot] section and `reboot '0 tryboot'`), the device is reconnected and
//     its health checked, and only then is the new slot committed by rewriting
//     autoboot.txt in place. Power loss before the commit boots the old slot;
//     the commit itself is one sector, so power loss during it boots either.
//
// The device side uses the stock tools of Raspberry Pi OS (sh, dd, sha256sum,
// cat, reboot). When the device's architecture matches kiln's own binary,
// kiln uploads itself once as a helper (checked by SHA-256 before every run)
// to hash and patch blocks in one process, which makes delta updates cheap.
//
// Protocol code talks to the small Runner interface; the x/crypto/ssh client
// sits at the edge and always verifies host keys against known_hosts.
package ssh

// Package sshdev writes images to Raspberry Pi devices in the field over SSH and
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
// cat, reboot). When a kiln-helper built for the device's architecture is
// at hand (make build puts amd64, arm64 and arm beside bin/kiln), it is
// uploaded once and checked by SHA-256 before every run. With it a delta
// update is one read of the slot: kiln sends the new image's block sums
// (CRC-32C and CRC-32, 8 bytes per 4 KiB block); the helper reads the slot
// once with O_DIRECT, reports each block whose sum differs as it finds it,
// writes the bytes kiln streams back, and hashes the slot with SHA-256 as it
// goes — blocks that matched as read from the medium, rewritten blocks as
// written and then read back after fsync. A block whose sum matched by
// accident cannot pass: the SHA-256 would differ from the image's. Without
// the helper, deltas hash every block with dd | sha256sum and the proof is
// a second read.
//
// A commit whose answer is lost (the connection or the power dropped) is
// settled by reconnecting: committed, still in the trial (commit again),
// restarted on the old slot (ErrRolledBack), or unreachable
// (ErrCommitUnknown) — never reported as a plain failure.
//
// Everything here talks to a device through flash/ssh's small Runner (one
// shell command with stdin and stdout) and Dialer; flash/ssh is the
// transport. The A/B logic itself is flash/ab's state machine: this package
// is its shell implementation of ab.Device. How the device picks the slot it
// boots is a bootControl, chosen by bootFor from the mechanism kiln.json
// names (tryboot.go is autoboot.txt, ubootenv.go U-Boot's uboot.env with a
// boot counter); a new mechanism is a file of its own and one case there.
package sshdev

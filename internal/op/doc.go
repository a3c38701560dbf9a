// Package op is kiln's one path for device work. Flash, Verify,
// FlashDisk and Update each take a Request and return a Report, and each
// owns the whole sequence:
//
//	load → board check → trust gate → open → write → verify → audit record
//
// The artifact is opened once (Load): its bytes are read into memory
// (firmware) or copied into a private directory (disk images, decompressed
// there), and everything after — the board check, the signature check,
// the write and the audit record's hash — uses those bytes, never the path
// again, so a file swapped after the check is not what gets written.
//
// The board comes from the artifact itself as well as from the caller:
// manifest.json beside a firmware file (when it lists that file's hash),
// kiln.json inside a disk image. An artifact for another board is refused
// before a device is opened (ErrWrongBoard); an unknown board counts as
// matching every board rule of the trust policy (fail closed).
//
// The CLI, the station and the fleet call this package for device work;
// it knows back ends only through flash/device's table, and talks to
// flash/ssh for the disk back end.
package op

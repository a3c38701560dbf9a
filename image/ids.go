package image

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// DeriveID returns n bytes (n ≤ 32) derived from seed for the purpose named
// by label, e.g. DeriveID(hash, "mbr-disk-id", 4). The same seed and label
// always give the same bytes; different labels give unrelated bytes.
func DeriveID(seed, label string, n int) []byte {
	h := sha256.Sum256([]byte("kiln image id\x00" + seed + "\x00" + label))
	return h[:n]
}

// DeriveUUID returns an RFC 4122 version-4-shaped UUID derived from seed and
// label, in canonical lower-case form.
func DeriveUUID(seed, label string) string {
	b := DeriveID(seed, label, 16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// DeriveUint32 returns a non-zero 32-bit value derived from seed and label
// (disk signatures and FAT volume IDs must not be zero).
func DeriveUint32(seed, label string) uint32 {
	for i := 0; ; i++ {
		v := binary.LittleEndian.Uint32(DeriveID(seed, fmt.Sprintf("%s#%d", label, i), 4))
		if v != 0 {
			return v
		}
	}
}

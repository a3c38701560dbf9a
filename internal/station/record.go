package station

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// RecordVersion is the record format Encode writes.
const RecordVersion = 1

// recordMagic starts every record.
var recordMagic = [4]byte{'K', 'P', 'R', 'V'}

// Field tags of a version 1 record.
const (
	tagSerial     = 1 // the serial number, text
	tagPrivateKey = 2 // Ed25519 seed, 32 bytes
	tagPublicKey  = 3 // Ed25519 public key, 32 bytes
	tagTime       = 4 // provisioning time, Unix seconds, 8 bytes little-endian
)

// ErrBadRecord means bytes are not a provisioning record: wrong magic, an
// unknown version, a bad length or a CRC that does not match.
var ErrBadRecord = errors.New("not a valid provisioning record")

// Record is what a device receives besides its firmware. Its encoding
// (little-endian) is
//
//	offset 0  4 bytes  magic "KPRV"
//	       4  1 byte   version (1)
//	       5  1 byte   number of fields
//	       6  2 bytes  length of the fields
//	       8  …        fields: tag (1 byte), length (1 byte), value
//	       …  4 bytes  CRC-32 (IEEE) of everything before it
//
// padded with 0xFF (erased flash) to the region's size. Firmware finds its
// serial number and key at a fixed address and checks the CRC before use.
type Record struct {
	Version    int
	Serial     string
	PrivateKey ed25519.PrivateKey // nil when the device gets no key pair
	PublicKey  ed25519.PublicKey
	Time       time.Time
}

// Encode returns the record padded to size bytes.
func (r *Record) Encode(size int) ([]byte, error) {
	var fields bytes.Buffer
	n := 0
	add := func(tag byte, v []byte) error {
		if len(v) > 255 {
			return fmt.Errorf("station: record field %d is %d bytes (255 at most)", tag, len(v))
		}
		fields.WriteByte(tag)
		fields.WriteByte(byte(len(v)))
		fields.Write(v)
		n++
		return nil
	}
	if r.Serial == "" {
		return nil, errors.New("station: record without a serial number")
	}
	if err := add(tagSerial, []byte(r.Serial)); err != nil {
		return nil, err
	}
	if r.PrivateKey != nil {
		if err := add(tagPrivateKey, r.PrivateKey.Seed()); err != nil {
			return nil, err
		}
	}
	if r.PublicKey != nil {
		if err := add(tagPublicKey, r.PublicKey); err != nil {
			return nil, err
		}
	}
	if !r.Time.IsZero() {
		var t [8]byte
		binary.LittleEndian.PutUint64(t[:], uint64(r.Time.Unix()))
		if err := add(tagTime, t[:]); err != nil {
			return nil, err
		}
	}
	total := 8 + fields.Len() + 4
	if total > size {
		return nil, fmt.Errorf("station: record of %d bytes does not fit the %d-byte provision region", total, size)
	}
	out := make([]byte, size)
	copy(out, recordMagic[:])
	out[4] = RecordVersion
	out[5] = byte(n)
	binary.LittleEndian.PutUint16(out[6:], uint16(fields.Len()))
	copy(out[8:], fields.Bytes())
	binary.LittleEndian.PutUint32(out[8+fields.Len():], crc32.ChecksumIEEE(out[:8+fields.Len()]))
	for i := total; i < size; i++ {
		out[i] = 0xFF
	}
	return out, nil
}

// DecodeRecord reads a record from the start of b. Errors wrap ErrBadRecord.
func DecodeRecord(b []byte) (*Record, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("station: %w: %s", ErrBadRecord, fmt.Sprintf(format, a...))
	}
	if len(b) < 12 || !bytes.Equal(b[:4], recordMagic[:]) {
		return nil, bad("no magic")
	}
	if b[4] != RecordVersion {
		return nil, bad("version %d (this kiln reads %d)", b[4], RecordVersion)
	}
	n := int(binary.LittleEndian.Uint16(b[6:]))
	if 8+n+4 > len(b) {
		return nil, bad("fields of %d bytes run past the end", n)
	}
	want := binary.LittleEndian.Uint32(b[8+n:])
	if got := crc32.ChecksumIEEE(b[:8+n]); got != want {
		return nil, bad("crc %08x, want %08x", got, want)
	}
	r := &Record{Version: int(b[4])}
	f := b[8 : 8+n]
	count := 0
	for len(f) > 0 {
		if len(f) < 2 || len(f) < 2+int(f[1]) {
			return nil, bad("field %d runs past the end", count+1)
		}
		tag, v := f[0], f[2:2+int(f[1])]
		f = f[2+int(f[1]):]
		count++
		switch tag {
		case tagSerial:
			r.Serial = string(v)
		case tagPrivateKey:
			if len(v) != ed25519.SeedSize {
				return nil, bad("private key of %d bytes", len(v))
			}
			r.PrivateKey = ed25519.NewKeyFromSeed(v)
		case tagPublicKey:
			if len(v) != ed25519.PublicKeySize {
				return nil, bad("public key of %d bytes", len(v))
			}
			r.PublicKey = ed25519.PublicKey(bytes.Clone(v))
		case tagTime:
			if len(v) != 8 {
				return nil, bad("time of %d bytes", len(v))
			}
			r.Time = time.Unix(int64(binary.LittleEndian.Uint64(v)), 0).UTC()
		}
		// Unknown tags are skipped: a later station may add fields.
	}
	if count != int(b[5]) {
		return nil, bad("%d fields, header says %d", count, b[5])
	}
	if r.Serial == "" {
		return nil, bad("no serial number")
	}
	if r.PrivateKey != nil && r.PublicKey != nil && !r.PublicKey.Equal(r.PrivateKey.Public()) {
		return nil, bad("public key does not belong to the private key")
	}
	return r, nil
}

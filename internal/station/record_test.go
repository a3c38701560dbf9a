package station_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"kiln.dev/kiln/internal/station"
)

func TestRecordRoundTrip(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	r := &station.Record{Version: 1, Serial: "KLN-000042", PrivateKey: priv, PublicKey: pub, Time: time.Unix(1_800_000_000, 0).UTC()}
	b, err := r.Encode(128)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 128 || string(b[:4]) != "KPRV" || b[4] != 1 {
		t.Fatalf("encoding % x", b[:8])
	}
	n := 8 + int(b[6]) + int(b[7])<<8
	if got := crc32.ChecksumIEEE(b[:n]); got != uint32(b[n])|uint32(b[n+1])<<8|uint32(b[n+2])<<16|uint32(b[n+3])<<24 {
		t.Errorf("CRC field does not hold the CRC-32 of the header and fields")
	}
	if !bytes.Equal(b[n+4:], bytes.Repeat([]byte{0xFF}, 128-n-4)) {
		t.Errorf("padding is not erased flash")
	}
	back, err := station.DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Serial != r.Serial || !back.PublicKey.Equal(pub) || !back.PrivateKey.Equal(priv) || !back.Time.Equal(r.Time) {
		t.Errorf("decoded %+v", back)
	}
	// Every single-bit flip in the record is caught.
	for i := 0; i < n+4; i++ {
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			if _, err := station.DecodeRecord(c); !errors.Is(err, station.ErrBadRecord) {
				t.Fatalf("flip byte %d bit %d: %v", i, bit, err)
			}
		}
	}
	if _, err := station.DecodeRecord(bytes.Repeat([]byte{0xFF}, 128)); !errors.Is(err, station.ErrBadRecord) {
		t.Errorf("erased flash decodes: %v", err)
	}
	if _, err := (&station.Record{Serial: "X", PrivateKey: priv, PublicKey: pub}).Encode(64); err == nil {
		t.Error("a record larger than its region encoded")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	good, _ := (&station.Record{Serial: "S-1", PrivateKey: priv, PublicKey: pub, Time: time.Unix(1, 0)}).Encode(128)
	f.Add(good)
	f.Add([]byte("KPRV\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := station.DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, station.ErrBadRecord) {
				t.Fatalf("error %v is not ErrBadRecord", err)
			}
			return
		}
		// What decodes encodes to a record that decodes the same.
		again, err := r.Encode(300)
		if err != nil {
			return // unknown fields made the original longer than 255
		}
		r2, err := station.DecodeRecord(again)
		if err != nil || r2.Serial != r.Serial || !r2.PublicKey.Equal(r.PublicKey) {
			t.Fatalf("re-encoded record: %v %+v", err, r2)
		}
	})
}

func ExampleRecord() {
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(seed)
	r := &station.Record{Serial: "KLN-000001", PrivateKey: priv, PublicKey: priv.Public().(ed25519.PublicKey)}
	b, _ := r.Encode(128)
	back, _ := station.DecodeRecord(b)
	fmt.Printf("%s v%d, %d bytes used of 128\n", back.Serial, back.Version, 8+int(b[6])+4)
	// Output: KLN-000001 v1, 92 bytes used of 128
}

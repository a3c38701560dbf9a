package flash_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"kiln.dev/kiln/flash"
)

// memHasher is a device that hashes its own memory and refuses to read it
// back: Verify must prove an image with the device's hash alone.
type memHasher struct {
	mem     []byte
	hashes  int
	corrupt bool
}

func (m *memHasher) Write(_ context.Context, img *flash.Image, _ flash.Progress) error {
	for _, s := range img.Segments {
		copy(m.mem[s.Addr:], s.Data)
	}
	if m.corrupt {
		m.mem[img.Segments[0].Addr] ^= 1
	}
	return nil
}

func (m *memHasher) ReadBack(context.Context, flash.Region, flash.Progress) ([]byte, error) {
	return nil, errors.New("memHasher: no read-back: hash on the device")
}

func (m *memHasher) HashRegions(_ context.Context, rs []flash.Region) (string, error) {
	m.hashes++
	h := sha256.New()
	for _, r := range rs {
		h.Write(m.mem[r.Addr : int(r.Addr)+r.Size])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

var (
	_ flash.Target = (*memHasher)(nil)
	_ flash.Hasher = (*memHasher)(nil)
)

func TestProgramWithDeviceHash(t *testing.T) {
	img, err := flash.NewImage("t", flash.Segment{Addr: 16, Data: []byte("kiln")}, flash.Segment{Addr: 64, Data: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	d := &memHasher{mem: make([]byte, 256)}
	res, err := flash.Program(context.Background(), d, img, nil)
	if err != nil || !res.Verified || res.DeviceSHA256 != img.SHA256() || d.hashes != 1 {
		t.Fatalf("program: %+v %v (hashes %d)", res, err, d.hashes)
	}
	bad := &memHasher{mem: make([]byte, 256), corrupt: true}
	res, err = flash.Program(context.Background(), bad, img, nil)
	if !errors.Is(err, flash.ErrVerify) || res.Verified {
		t.Fatalf("a device whose hash differs: %+v %v", res, err)
	}
}

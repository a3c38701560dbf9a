package sshdev

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// WriteImage against the host's own dd and sha256sum (a file standing in
// for the block device): a bmap is checked against the image's size before
// anything runs and against the whole image while it streams, and the
// result names the whole artifact's hash.
func TestWriteImageChecksTheBmapAgainstTheImage(t *testing.T) {
	dir := t.TempDir()
	img := make([]byte, 16*image.BlockSize)
	for _, b := range []int{0, 5, 6, 15} {
		copy(img[b*image.BlockSize:], bytes.Repeat([]byte{byte(b + 1)}, 1000))
	}
	mapped := make([]bool, 16)
	for _, b := range []int{0, 5, 6, 15} {
		mapped[b] = true
	}
	bmapOf := func(mapped []bool) *disk.Bmap {
		var buf bytes.Buffer
		if err := image.WriteBmap(&buf, bytes.NewReader(img), int64(len(img)), mapped); err != nil {
			t.Fatal(err)
		}
		bm, err := disk.ReadBmap(&buf)
		if err != nil {
			t.Fatal(err)
		}
		return bm
	}
	dev := filepath.Join(dir, "sdx")
	blank := bytes.Repeat([]byte{0xAA}, len(img))
	r := localRunner{os.Getenv("PATH")}
	ctx := context.Background()
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("no /proc")
	}

	// Refused by sentinel before any command reaches the device
	// (disk.BmapFor, as flash/blockdev does): a compressed image without
	// its bmap, an image whose size is not its bmap's.
	var xz bytes.Buffer
	if err := image.CompressXZ(ctx, &xz, bytes.NewReader(img), image.XZOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteImage(ctx, noRunner{t}, dev, "card.img.xz", bytes.NewReader(xz.Bytes()), nil, nil); !errors.Is(err, disk.ErrNoBmap) {
		t.Errorf("xz without a bmap: %v", err)
	}
	longer := filepath.Join(dir, "longer.img")
	os.WriteFile(longer, append(append([]byte(nil), img...), make([]byte, 512)...), 0o644)
	if _, err := WriteDevice(ctx, noRunner{t}, dev, longer, bmapOf(mapped), nil); !errors.Is(err, disk.ErrBmap) || !strings.Contains(err.Error(), "its bmap says") {
		t.Errorf("image longer than its bmap: %v", err)
	}

	os.WriteFile(dev, blank, 0o600)
	res, err := WriteImage(ctx, r, dev, "card.img", bytes.NewReader(img), bmapOf(mapped), nil)
	if err != nil {
		t.Skipf("host dd cannot stand in for the device here: %v", err)
	}
	whole := sha256.Sum256(img)
	if !res.Verified || res.ArtifactSHA256 != hex.EncodeToString(whole[:]) || res.BytesWritten != 4*image.BlockSize {
		t.Errorf("result %+v", res)
	}

	// The short-bmap attack: one block listed of sixteen. Before, the write
	// ended "verified" with the hash of that one block.
	short := make([]bool, 16)
	short[0] = true
	os.WriteFile(dev, blank, 0o600)
	res, err = WriteImage(ctx, r, dev, "card.img", bytes.NewReader(img), bmapOf(short), nil)
	if !errors.Is(err, disk.ErrBmap) || res.Verified {
		t.Errorf("short bmap: %v, verified %v", err, res.Verified)
	}

	// An image changed after its bmap was made.
	changed := append([]byte(nil), img...)
	changed[6*image.BlockSize+3] ^= 1
	os.WriteFile(dev, blank, 0o600)
	if res, err := WriteImage(ctx, r, dev, "card.img", bytes.NewReader(changed), bmapOf(mapped), nil); !errors.Is(err, disk.ErrBmap) || res.Verified {
		t.Errorf("changed image: %v", err)
	}

	// xz: the artifact hash is of the compressed file as read.
	os.WriteFile(dev, blank, 0o600)
	res, err = WriteImage(ctx, r, dev, "card.img.xz", bytes.NewReader(xz.Bytes()), bmapOf(mapped), nil)
	xsum := sha256.Sum256(xz.Bytes())
	if err != nil || !res.Verified || res.ArtifactSHA256 != hex.EncodeToString(xsum[:]) {
		t.Errorf("xz: %v %+v", err, res)
	}
}

// noRunner fails the test if a command reaches the device.
type noRunner struct{ t *testing.T }

func (n noRunner) Run(_ context.Context, cmd string, _ io.Reader, _ io.Writer) error {
	n.t.Errorf("a refused write ran %q on the device", cmd)
	return errors.New("no device")
}

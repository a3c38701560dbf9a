package sshdev

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

func TestWriteDeviceStreamsMappedBlocksAndProvesThem(t *testing.T) {
	f, devs, img := fleet(t, 1, sshtest.ImageSpec{Derivation: "abcdabcdabcdabcd1234", Seed: 3})
	dev := devs[0]
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// The bmap kiln's image builder would write: blocks holding any non-zero byte.
	blocks := (len(data) + image.BlockSize - 1) / image.BlockSize
	mapped := make([]bool, blocks)
	for b := range mapped {
		mapped[b] = !bytes.Equal(data[b*image.BlockSize:min(len(data), (b+1)*image.BlockSize)], make([]byte, min(image.BlockSize, len(data)-b*image.BlockSize)))
	}
	var bm bytes.Buffer
	if err := image.WriteBmap(&bm, bytes.NewReader(data), int64(len(data)), mapped); err != nil {
		t.Fatal(err)
	}
	bmap, err := disk.ReadBmap(bytes.NewReader(bm.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	xzPath := filepath.Join(f.Dir, "card.img.xz")
	xf, _ := os.Create(xzPath)
	if err := image.CompressXZ(context.Background(), xf, bytes.NewReader(data), image.XZOptions{}); err != nil {
		t.Fatal(err)
	}
	xf.Close()

	for _, tc := range []struct{ name, path string }{{"img", img}, {"img.xz", xzPath}} {
		t.Run(tc.name, func(t *testing.T) {
			disk, err := dev.AddDisk("sd"+tc.name[len(tc.name)-1:], int64(len(data)), 0xAA)
			if err != nil {
				t.Fatal(err)
			}
			c, err := dialer(f, dev)(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			res, err := WriteDevice(context.Background(), c, "/dev/"+filepath.Base(disk[:len(disk)-5]), tc.path, bmap, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Verified || res.DeviceSHA256 != res.ImageSHA256 || res.BytesWritten >= int64(len(data)) {
				t.Fatalf("result %+v", res)
			}
			got, _ := os.ReadFile(disk)
			for b, m := range mapped {
				lo, hi := b*image.BlockSize, min(len(data), (b+1)*image.BlockSize)
				if m && !bytes.Equal(got[lo:hi], data[lo:hi]) {
					t.Fatalf("mapped block %d differs on the device", b)
				}
				if !m && !bytes.Equal(got[lo:hi], bytes.Repeat([]byte{0xAA}, hi-lo)) {
					t.Fatalf("hole block %d was written", b)
				}
			}
			t.Logf("%s: wrote %d of %d bytes in %d ranges, device sha256 %s", tc.name, res.BytesWritten, len(data), res.Ranges, res.DeviceSHA256[:16])
		})
	}
	// A corrupt image (one byte in a mapped block) is caught by the bmap checksums.
	bad := append([]byte(nil), data...)
	for b, m := range mapped {
		if m && b > 0 {
			bad[b*image.BlockSize+7] ^= 0xff
			break
		}
	}
	badPath := filepath.Join(f.Dir, "bad.img")
	os.WriteFile(badPath, bad, 0o644)
	disk, _ := dev.AddDisk("sdz", int64(len(data)), 0)
	c, _ := dialer(f, dev)(context.Background())
	defer c.Close()
	_, err = WriteDevice(context.Background(), c, "/dev/sdz", badPath, bmap, nil)
	if err == nil || errors.Is(err, errVerify) {
		t.Fatalf("corrupt image: err = %v", err)
	}
	_ = disk
}

package blockdev

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// loopDevice attaches a loop device to a new file of size bytes filled
// with 0x5a (so a skipped hole is visible) and returns its path.
func loopDevice(t testing.TB, size int64) (dev, backing string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skipf("losetup is not installed (make deps installs util-linux): %v", err)
	}
	backing = filepath.Join(t.TempDir(), "card")
	if err := os.WriteFile(backing, bytes.Repeat([]byte{0x5a}, int(size)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device here: %v %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev, backing
}

// testImage writes a size-byte disk image with data in some 4 KiB blocks
// and holes elsewhere, its bmap and its .img.xz, and returns the paths.
func testImage(t testing.TB, dir string, size int64) (img, xz string, bm *disk.Bmap) {
	return testImageMapped(t, dir, size, func(i int) bool { return i%5 == 0 || i < 16 }) // a table, then scattered data
}

// testImageMapped is testImage with the mapped 4 KiB blocks chosen by isMapped.
func testImageMapped(t testing.TB, dir string, size int64, isMapped func(block int) bool) (img, xz string, bm *disk.Bmap) {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewSource(1))
	mapped := make([]bool, size/image.BlockSize)
	for i := range mapped {
		if isMapped(i) {
			mapped[i] = true
			rng.Read(b[int64(i)*image.BlockSize : int64(i+1)*image.BlockSize])
		}
	}
	img = filepath.Join(dir, "image.img")
	os.WriteFile(img, b, 0o644)
	var bmap bytes.Buffer
	if err := image.WriteBmap(&bmap, bytes.NewReader(b), size, mapped); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "image.bmap"), bmap.Bytes(), 0o644)
	bm, err := disk.ReadBmap(bytes.NewReader(bmap.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	xz = img + ".xz"
	xf, _ := os.Create(xz)
	if err := image.CompressXZ(context.Background(), xf, bytes.NewReader(b), image.XZOptions{}); err != nil {
		t.Fatal(err)
	}
	xf.Close()
	return img, xz, bm
}

func fileSum(t testing.TB, p string, n int64) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, n)
	f.ReadAt(buf, 0)
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil))
}

// TestWriteProven: .img and .img.xz with their bmap are written to a loop
// device (non-removable, so --force), read back and proven; the mapped
// blocks hold the image, the holes the device's old bytes.
func TestWriteProven(t *testing.T) {
	const size = 8 << 20
	img, xz, bm := testImage(t, t.TempDir(), size)
	want, _ := os.ReadFile(img)
	for _, src := range []string{img, xz} {
		t.Run(filepath.Base(src), func(t *testing.T) {
			dev, backing := loopDevice(t, 16<<20)
			var phases []string
			rep, err := Write(context.Background(), dev, src, Options{Bmap: bm, Force: true,
				Progress: func(phase string, done, total int64) {
					if len(phases) == 0 || phases[len(phases)-1] != phase {
						phases = append(phases, phase)
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			full := sha256.Sum256(want)
			if !rep.Verified || rep.ArtifactSHA256 != hex.EncodeToString(full[:]) || rep.ReadbackSHA256 != rep.WrittenSHA256 {
				t.Errorf("report %+v", rep)
			}
			if rep.BytesWritten >= size || rep.BytesWritten == 0 {
				t.Errorf("wrote %d of %d bytes: the holes were not skipped", rep.BytesWritten, size)
			}
			if strings.Join(phases, ",") != "write,verify" {
				t.Errorf("progress phases %v", phases)
			}
			got, _ := os.ReadFile(backing)
			for i, r := range bm.Ranges {
				off, n := r.Offset(bm.BlockSize, bm.ImageSize)
				if !bytes.Equal(got[off:off+n], want[off:off+n]) {
					t.Fatalf("range %d differs on the device", i)
				}
			}
			if got[17*4096] != 0x5a {
				t.Error("a hole was written")
			}
		})
	}
}

// TestCorruptionCaught: a range changed on the "card" between the write and
// the read-back (by the package's one fault hook, which the kilnfault
// binary sets too) is flash.ErrVerify (exit 3), and the report says what
// was written and what was read.
func TestCorruptionCaught(t *testing.T) {
	img, _, bm := testImage(t, t.TempDir(), 4<<20)
	dev, _ := loopDevice(t, 8<<20)
	var hooked []string
	faultBeforeVerify = func(path string) error {
		hooked = append(hooked, path)
		return corrupt(path, 5*4096) // block 5: mapped
	}
	t.Cleanup(func() { faultBeforeVerify = nil })
	rep, err := Write(context.Background(), dev, img, Options{Bmap: bm, Force: true})
	if !errors.Is(err, flash.ErrVerify) || rep.Verified {
		t.Fatalf("err = %v, verified %v", err, rep.Verified)
	}
	if !strings.HasPrefix(err.Error(), "blockdev: "+rep.Path+": ") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q: want one line naming the device", err)
	}
	if len(hooked) != 1 || hooked[0] != rep.Path {
		t.Errorf("fault hook ran for %v, want once for %s", hooked, rep.Path)
	}
	if rep.WrittenSHA256 == "" || rep.ReadbackSHA256 == "" || rep.ReadbackSHA256 == rep.WrittenSHA256 || rep.ArtifactSHA256 == "" {
		t.Errorf("report %+v", rep)
	}
}

// TestRefusals: each refusal happens before a byte is written.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	img, _, bm := testImage(t, dir, 4<<20)
	cases := []struct {
		name string
		size int64
		opts func(dev string) Options
		want error
	}{
		{"not removable", 8 << 20, func(string) Options { return Options{Bmap: bm} }, ErrNotRemovable},
		{"too small", 2 << 20, func(string) Options { return Options{Bmap: bm, Force: true} }, ErrTooSmall},
		{"system disk", 8 << 20, func(dev string) Options {
			return Options{Bmap: bm, Force: true, proc: fakeProc(t, dev, "/")}
		}, ErrSystemDisk},
		{"mounted", 8 << 20, func(dev string) Options {
			return Options{Bmap: bm, Force: true, proc: fakeProc(t, dev, "/media/card")}
		}, ErrMounted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dev, backing := loopDevice(t, c.size)
			before := fileSum(t, backing, c.size)
			_, err := Write(context.Background(), dev, img, c.opts(dev))
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if fileSum(t, backing, c.size) != before {
				t.Error("a refused write changed the device")
			}
		})
	}
	// A really mounted device: an ext4 file system (a kernel here may lack
	// vfat) on the loop device.
	t.Run("really mounted", func(t *testing.T) {
		dev, backing := loopDevice(t, 8<<20)
		if out, err := exec.Command("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v %s", err, out)
		}
		mnt := t.TempDir()
		if out, err := exec.Command("mount", "-o", "ro", dev, mnt).CombinedOutput(); err != nil {
			t.Skipf("this kernel cannot mount ext4 here: %v %s", err, out)
		}
		defer exec.Command("umount", mnt).Run()
		before := fileSum(t, backing, 8<<20)
		if _, err := Write(context.Background(), dev, img, Options{Bmap: bm, Force: true}); !errors.Is(err, ErrMounted) {
			t.Fatalf("err = %v, want ErrMounted", err)
		}
		if fileSum(t, backing, 8<<20) != before {
			t.Error("a refused write changed the device")
		}
	})
	// A bmap that does not describe the image: refused before writing.
	t.Run("bmap of another image", func(t *testing.T) {
		dev, backing := loopDevice(t, 8<<20)
		before := fileSum(t, backing, 8<<20)
		other := *bm
		other.ImageSize = 3 << 20
		if _, err := Write(context.Background(), dev, img, Options{Bmap: &other, Force: true}); !errors.Is(err, ErrBadBmap) {
			t.Fatalf("err = %v, want ErrBadBmap", err)
		}
		if fileSum(t, backing, 8<<20) != before {
			t.Error("a refused write changed the device")
		}
	})
	t.Run("not a block device", func(t *testing.T) {
		if _, err := Write(context.Background(), img, img, Options{Bmap: bm, Force: true}); !errors.Is(err, ErrNotBlockDevice) {
			t.Fatalf("err = %v", err)
		}
	})
}

// fakeProc writes a mountinfo that mounts dev on mountpoint.
func fakeProc(t *testing.T, dev, mountpoint string) string {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	line := fmt.Sprintf("30 1 %d:%d / %s rw,relatime - vfat %s rw\n", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), mountpoint, dev)
	os.WriteFile(filepath.Join(dir, "mountinfo"), []byte(line), 0o644)
	return dir
}

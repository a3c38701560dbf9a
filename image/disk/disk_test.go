package disk_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
)

// mbr returns a 1 MiB disk with an MBR whose entries are given as
// {type, start sector, sectors}.
func mbr(entries ...[3]uint32) []byte {
	b := make([]byte, 1<<20)
	binary.LittleEndian.PutUint32(b[440:], 0xdeadbeef)
	for i, e := range entries {
		p := b[446+16*i:]
		p[4] = byte(e[0])
		binary.LittleEndian.PutUint32(p[8:], e[1])
		binary.LittleEndian.PutUint32(p[12:], e[2])
	}
	b[510], b[511] = 0x55, 0xaa
	return b
}

// ebr writes an EBR at sector lba: a logical partition at rel sectors from
// it and a link to the next EBR at next sectors from the extended start.
func ebr(b []byte, lba, rel, n, next uint32) {
	e := b[lba*512:]
	e[446+4] = 0x83
	binary.LittleEndian.PutUint32(e[446+8:], rel)
	binary.LittleEndian.PutUint32(e[446+12:], n)
	if next != 0 {
		e[462+4] = 0x05
		binary.LittleEndian.PutUint32(e[462+8:], next)
		binary.LittleEndian.PutUint32(e[462+12:], 8)
	}
	e[510], e[511] = 0x55, 0xaa
}

func TestReadTableMBRWithLogicalPartitions(t *testing.T) {
	b := mbr([3]uint32{0x0c, 8, 100}, [3]uint32{0x0f, 200, 1000})
	ebr(b, 200, 8, 100, 300)
	ebr(b, 500, 8, 50, 0)
	tbl, err := disk.ReadTable(disk.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Kind != "mbr" || tbl.DiskID != "deadbeef" || len(tbl.Partitions) != 4 {
		t.Fatalf("%+v", tbl)
	}
	want := []disk.Partition{
		{Number: 1, Start: 8 * 512, Size: 100 * 512, Type: "0x0c", PartUUID: "deadbeef-01"},
		{Number: 2, Start: 200 * 512, Size: 1000 * 512, Type: "0x0f", PartUUID: "deadbeef-02", Extended: true},
		{Number: 5, Start: 208 * 512, Size: 100 * 512, Type: "0x83", PartUUID: "deadbeef-05"},
		{Number: 6, Start: 508 * 512, Size: 50 * 512, Type: "0x83", PartUUID: "deadbeef-06"},
	}
	for i, p := range tbl.Partitions {
		if p != want[i] {
			t.Errorf("partition %d = %+v, want %+v", i, p, want[i])
		}
	}
}

func TestReadTableGPTAsGoDiskfsWritesIt(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "gpt.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 << 20
	f.Truncate(size)
	gt := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "8b1c2e3a-5d6f-4a7b-9c8d-0e1f2a3b4c5d",
		Partitions: []*gpt.Partition{
			{Index: 1, Start: 2048, End: 4095, Type: gpt.MicrosoftBasicData, Name: "boot", GUID: "11111111-2222-3333-4444-555555555555", Attributes: 4},
			{Index: 2, Start: 4096, End: 8191, Type: gpt.LinuxFilesystem, Name: "root", GUID: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"},
		}}
	if err := gt.Write(f, size); err != nil {
		t.Fatal(err)
	}
	tbl, err := disk.ReadTable(disk.FromReaderAt(f, size))
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Kind != "gpt" || tbl.DiskID != "8b1c2e3a-5d6f-4a7b-9c8d-0e1f2a3b4c5d" || len(tbl.Partitions) != 2 {
		t.Fatalf("%+v", tbl)
	}
	p := tbl.Partitions[0]
	if p.Number != 1 || p.Start != 2048*512 || p.Size != 2048*512 || p.Name != "boot" || !p.Bootable ||
		p.PartUUID != "11111111-2222-3333-4444-555555555555" || p.Type != strings.ToLower(string(gpt.MicrosoftBasicData)) {
		t.Errorf("partition 1 = %+v", p)
	}
	if p := tbl.Partitions[1]; p.Name != "root" || p.End() != 8192*512 {
		t.Errorf("partition 2 = %+v", p)
	}
}

// gptDisk returns a protective MBR and a GPT header whose fields are set
// by edit, with correct checksums (so only the field under test is wrong).
func gptDisk(edit func(h, ents []byte)) []byte {
	b := mbr([3]uint32{0xee, 1, 100})
	h := b[512:1024]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 128)
	binary.LittleEndian.PutUint32(h[84:], 128)
	ents := b[1024 : 1024+128*128]
	ents[0] = 1 // a type GUID: the entry is used
	binary.LittleEndian.PutUint64(ents[32:], 34)
	binary.LittleEndian.PutUint64(ents[40:], 99)
	edit(h, ents)
	binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(ents))
	binary.LittleEndian.PutUint32(h[16:], 0)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}

func TestReadTableRefusesHostileTables(t *testing.T) {
	loop := mbr([3]uint32{0x05, 100, 400})
	ebr(loop, 100, 8, 10, 0)
	binary.LittleEndian.PutUint32(loop[100*512+462+8:], 0) // links back to itself
	loop[100*512+462+4] = 0x05
	outside := mbr([3]uint32{0x05, 100, 50})
	ebr(outside, 100, 8, 1000, 0)
	for name, b := range map[string][]byte{
		"no signature":           make([]byte, 4096),
		"ebr loop":               loop,
		"logical past extended":  outside,
		"gpt zero entry size":    gptDisk(func(h, _ []byte) { binary.LittleEndian.PutUint32(h[84:], 0) }),
		"gpt huge entry count":   gptDisk(func(h, _ []byte) { binary.LittleEndian.PutUint32(h[80:], 0xffffffff) }),
		"gpt entries at lba 0":   gptDisk(func(h, _ []byte) { binary.LittleEndian.PutUint64(h[72:], 0) }),
		"gpt entries far away":   gptDisk(func(h, _ []byte) { binary.LittleEndian.PutUint64(h[72:], 1<<62) }),
		"gpt overflowing lba":    gptDisk(func(_, e []byte) { binary.LittleEndian.PutUint64(e[40:], 1<<63) }),
		"gpt last before first":  gptDisk(func(_, e []byte) { binary.LittleEndian.PutUint64(e[40:], 2) }),
		"gpt bad header crc":     func() []byte { b := gptDisk(func(_, _ []byte) {}); b[512+100-8] ^= 1; b[512+80] ^= 1; return b }(),
		"gpt header size 0":      gptDisk(func(h, _ []byte) { binary.LittleEndian.PutUint32(h[12:], 0) }),
		"protective mbr, no gpt": mbr([3]uint32{0xee, 1, 100}),
	} {
		if _, err := disk.ReadTable(disk.FromBytes(b)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, disk.ErrTable) && !errors.Is(err, disk.ErrNoTable) && !strings.Contains(err.Error(), "past the end") {
			t.Errorf("%s: %v is not ErrTable", name, err)
		}
	}
	// The same header with nothing changed is read.
	if tbl, err := disk.ReadTable(disk.FromBytes(gptDisk(func(_, _ []byte) {}))); err != nil || len(tbl.Partitions) != 1 {
		t.Errorf("good gpt: %v %+v", err, tbl)
	}
}

// fat32 returns a FAT32 file system holding files.
func fat32(t testing.TB, files map[string]string) []byte {
	tree := image.NewTree()
	for n, d := range files {
		if err := tree.AddBytes(n, []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var w wbuf
	w.b = make([]byte, 40<<20)
	if err := image.WriteFAT32(&w, int64(len(w.b)), tree, image.FATOptions{Label: "BOOT"}); err != nil {
		t.Fatal(err)
	}
	return w.b
}

type wbuf struct{ b []byte }

func (w *wbuf) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }

func TestReadFileFindsLongAndShortNames(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 2000) // several clusters
	fs := fat32(t, map[string]string{"kiln.json": `{"derivation":"d1","slots":[{"name":"a","boot":2,"root":4},{"name":"b","boot":3,"root":5}]}`,
		"cmdline.txt": "console=serial0 root=PARTUUID=deadbeef-04 rootwait\n", "Long File Name.data": big})
	m, err := disk.ReadMetadata(disk.FromBytes(fs))
	if err != nil {
		t.Fatal(err)
	}
	if ab, err := m.ABSlots(); err != nil || m.Derivation != "d1" || ab[1].Root != 5 {
		t.Fatalf("%+v %v", m, err)
	}
	f, err := disk.ReadFile(disk.FromBytes(fs), "long file name.DATA", 1<<20)
	if err != nil || string(f.Data) != big {
		t.Fatalf("long name: %v (%d bytes)", err, len(f.Data))
	}
	// The extents are where the bytes are: patching through them edits the file.
	cl, err := disk.ReadFile(disk.FromBytes(fs), "CMDLINE.TXT", 4096)
	if err != nil {
		t.Fatal(err)
	}
	writes, data, err := cl.Patch("PARTUUID=deadbeef-04", "PARTUUID=cafebabe-05")
	if err != nil {
		t.Fatal(err)
	}
	for off, b := range writes {
		copy(fs[off:], b)
	}
	if again, err := disk.ReadFile(disk.FromBytes(fs), "cmdline.txt", 4096); err != nil || !bytes.Equal(again.Data, data) || !bytes.Contains(data, []byte("cafebabe-05")) {
		t.Errorf("patched cmdline.txt: %v %q", err, again.Data)
	}
	if _, err := disk.ReadFile(disk.FromBytes(fs), "missing.txt", 4096); !errors.Is(err, disk.ErrNotFound) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := disk.ReadFile(disk.FromBytes(fs), "long file name.data", 100); !errors.Is(err, disk.ErrFAT) {
		t.Errorf("file over the limit: %v", err)
	}
}

func TestReadFileRefusesHostileFAT(t *testing.T) {
	good := fat32(t, map[string]string{"kiln.json": strings.Repeat("x", 10000)})
	bps := int(binary.LittleEndian.Uint16(good[11:]))
	rsvd := int(binary.LittleEndian.Uint16(good[14:]))
	edit := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	fatAt := rsvd * bps
	for name, b := range map[string][]byte{
		"zero bytes per sector": edit(func(b []byte) { binary.LittleEndian.PutUint16(b[11:], 0) }),
		"huge FAT":              edit(func(b []byte) { binary.LittleEndian.PutUint32(b[36:], 0x7fffffff) }),
		"FAT smaller than its clusters": edit(func(b []byte) {
			binary.LittleEndian.PutUint32(b[36:], 1)
		}),
		"cluster past the FAT": edit(func(b []byte) {
			for c := 3; c < 12; c++ { // the file's chain points past the last cluster
				binary.LittleEndian.PutUint32(b[fatAt+4*c:], 0x0ffffff0)
			}
		}),
		"chain loops": edit(func(b []byte) {
			for c := 3; c < 12; c++ {
				binary.LittleEndian.PutUint32(b[fatAt+4*c:], 3)
			}
		}),
		"data start past the end": edit(func(b []byte) { binary.LittleEndian.PutUint16(b[14:], 0xffff) }),
	} {
		if _, err := disk.ReadFile(disk.FromBytes(b), "kiln.json", 1<<20); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := disk.ReadFile(disk.FromBytes(good), "kiln.json", 1<<20); err != nil {
		t.Fatalf("unedited: %v", err)
	}
}

func TestMetadataABRefusesBadSlots(t *testing.T) {
	for _, doc := range []string{
		`{"slots":[]}`,
		`{"slots":[{"name":"a","boot":2,"root":4}]}`,
		`{"slots":[{"name":"a","boot":2,"root":4},{"name":"b","boot":2,"root":5}]}`,
		`{"slots":[{"name":"a","boot":2,"root":4},{"name":"a","boot":3,"root":5}]}`,
		`{"slots":[{"name":"a","boot":-1,"root":4},{"name":"b","boot":3,"root":5}]}`,
		`{"slots":[{"name":"a","boot":2,"root":4},{"name":"b","boot":3,"root":99999999999}]}`,
		`[1,2`,
	} {
		m, err := disk.ParseMetadata([]byte(doc))
		if err == nil {
			_, err = m.ABSlots()
		}
		if err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
}

func bmapOf(t testing.TB, img []byte, mapped []bool) *disk.Bmap {
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

func TestBmapStreamChecksTheWholeImage(t *testing.T) {
	img := make([]byte, 10*image.BlockSize+512)
	for _, b := range []int{0, 3, 4, 10} {
		copy(img[b*image.BlockSize:], "data")
	}
	bm := bmapOf(t, img, []bool{true, false, false, true, true, false, false, false, false, false, true})
	var got []byte
	sum, err := bm.Stream(bytes.NewReader(img), func(off int64, p []byte) error {
		got = append(got, p...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := sha256.Sum256(got); hex.EncodeToString(h[:]) != sum || int64(len(got)) != bm.Mapped() {
		t.Errorf("mapped bytes: %d, sum %s", len(got), sum)
	}
	// A bmap that leaves out data: one block listed of many (the short-bmap attack).
	short := bmapOf(t, img, []bool{true, false, false, false, false, false, false, false, false, false, false})
	if _, err := short.Stream(bytes.NewReader(img), func(int64, []byte) error { return nil }); !errors.Is(err, disk.ErrBmap) ||
		!strings.Contains(err.Error(), fmt.Sprintf("byte %d holds data", 3*image.BlockSize)) {
		t.Errorf("short bmap: %v, want ErrBmap naming byte %d, the first unlisted data", err, 3*image.BlockSize)
	}
	// A range whose bytes changed after the bmap was made.
	bad := append([]byte(nil), img...)
	bad[3*image.BlockSize+1] = 'X'
	if _, err := bm.Stream(bytes.NewReader(bad), func(int64, []byte) error { return nil }); !errors.Is(err, disk.ErrBmap) {
		t.Errorf("changed range: %v", err)
	}
	// Truncated and overlong images.
	// Truncated inside a mapped range and inside a hole: both ErrBmap; a
	// read error that is not the image ending is passed on, not ErrBmap.
	if _, err := bm.Stream(bytes.NewReader(img[:len(img)-1]), func(int64, []byte) error { return nil }); !errors.Is(err, disk.ErrBmap) {
		t.Errorf("image truncated in a mapped range: %v", err)
	}
	if _, err := bm.Stream(bytes.NewReader(img[:6*image.BlockSize]), func(int64, []byte) error { return nil }); !errors.Is(err, disk.ErrBmap) {
		t.Errorf("image truncated in a hole: %v", err)
	}
	broken := errors.New("xz: data is corrupt")
	if _, err := bm.Stream(io.MultiReader(bytes.NewReader(img[:2*image.BlockSize]), iotest.ErrReader(broken)), func(int64, []byte) error { return nil }); !errors.Is(err, broken) || errors.Is(err, disk.ErrBmap) {
		t.Errorf("read error: %v, want it passed on and not ErrBmap", err)
	}
	if _, err := bm.Stream(bytes.NewReader(append(img, 0)), func(int64, []byte) error { return nil }); !errors.Is(err, disk.ErrBmap) {
		t.Errorf("overlong image: %v", err)
	}
}

// TestBmapFor: the bmap a whole-disk write follows, or the refusal, by
// sentinel, before the image is read.
func TestBmapFor(t *testing.T) {
	img := make([]byte, 4*image.BlockSize)
	copy(img, "table")
	bm := bmapOf(t, img, []bool{true, false, false, false})
	if got, err := disk.BmapFor("a.img", int64(len(img)), bm); err != nil || got != bm {
		t.Errorf("matching size: %v, %v", got, err)
	}
	if got, err := disk.BmapFor("a.img.xz", -1, bm); err != nil || got != bm {
		t.Errorf("compressed with its bmap: %v, %v", got, err)
	}
	got, err := disk.BmapFor("a.img", 3*512, nil)
	if err != nil || got.ImageSize != 3*512 || got.Mapped() != 3*512 || len(got.Ranges) != 1 {
		t.Errorf("no bmap, known size: %+v, %v", got, err)
	}
	_, err = disk.BmapFor("a.img.xz", -1, nil)
	if !errors.Is(err, disk.ErrNoBmap) || errors.Is(err, disk.ErrBmap) || !strings.Contains(err.Error(), "a.img.xz") {
		t.Errorf("compressed without a bmap: %v", err)
	}
	_, err = disk.BmapFor("a.img", int64(len(img))+512, bm)
	if !errors.Is(err, disk.ErrBmap) || !strings.Contains(err.Error(), fmt.Sprintf("a.img is %d bytes, its bmap says %d", len(img)+512, len(img))) {
		t.Errorf("size differs from the bmap's: %v", err)
	}
}

func FuzzReadTable(f *testing.F) {
	b := mbr([3]uint32{0x0c, 8, 100}, [3]uint32{0x0f, 200, 1000})
	ebr(b, 200, 8, 100, 300)
	ebr(b, 500, 8, 50, 0)
	f.Add(b[:600*512])
	f.Add(gptDisk(func(_, _ []byte) {})[:40*512])
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, err := disk.ReadTable(disk.FromBytes(b))
		if err != nil {
			return
		}
		for _, p := range tbl.Partitions {
			if p.Start < 0 || p.Size < 0 || p.End() < p.Start {
				t.Fatalf("partition %+v", p)
			}
		}
	})
}

func FuzzReadFile(f *testing.F) {
	fs := fat32(f, map[string]string{"kiln.json": `{"slots":[]}`, "autoboot.txt": "[all]\n"})
	// The fuzzer edits the boot sector, the start of the FAT and the root
	// directory; the rest of the file system stays.
	f.Add(fs[:512], fs[32*512:33*512], make([]byte, 0))
	root := int64(rootDir(fs))
	f.Fuzz(func(t *testing.T, boot, fat, dir []byte) {
		edits := []struct {
			at int64
			b  []byte
		}{{0, boot}, {32 * 512, fat}, {root, dir}}
		// The edited file system, read without copying all of it.
		rd := func(off, n int64) ([]byte, error) {
			b, err := disk.FromBytes(fs)(off, n)
			if err != nil {
				return nil, err
			}
			b = append([]byte(nil), b...)
			for _, e := range edits {
				for i, c := range e.b {
					if p := e.at + int64(i) - off; p >= 0 && p < n {
						b[p] = c
					}
				}
			}
			return b, nil
		}
		if f, err := disk.ReadFile(rd, "kiln.json", 1<<16); err == nil && len(f.Data) > 1<<16 {
			t.Fatalf("read %d bytes past the limit", len(f.Data))
		}
	})
}

// rootDir is the byte offset of a FAT32 file system's root directory cluster.
func rootDir(fs []byte) int {
	bps := int(binary.LittleEndian.Uint16(fs[11:]))
	spc := int(fs[13])
	rsvd := int(binary.LittleEndian.Uint16(fs[14:]))
	nfats := int(fs[16])
	fatSz := int(binary.LittleEndian.Uint32(fs[36:]))
	root := int(binary.LittleEndian.Uint32(fs[44:]))
	return (rsvd + nfats*fatSz + (root-2)*spc) * bps
}

func FuzzReadBmap(f *testing.F) {
	img := make([]byte, 3*image.BlockSize)
	copy(img, "boot")
	var buf bytes.Buffer
	image.WriteBmap(&buf, bytes.NewReader(img), int64(len(img)), []bool{true, false, false})
	f.Add(buf.Bytes(), img[:10])
	f.Add([]byte(`<bmap version="2.0"><ImageSize>9000000000000000</ImageSize><BlockSize>1</BlockSize><BlockMap><Range>0-8999999999999999</Range></BlockMap></bmap>`), []byte{1})
	f.Fuzz(func(t *testing.T, doc, head []byte) {
		bm, err := disk.ReadBmap(bytes.NewReader(doc))
		if err != nil || bm.ImageSize > 1<<20 {
			return
		}
		data := make([]byte, bm.ImageSize)
		copy(data, head)
		bm.Stream(bytes.NewReader(data), func(int64, []byte) error { return nil })
	})
}

func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte(`{"derivation":"d","slots":[{"name":"a","boot":2,"root":4},{"name":"b","boot":3,"root":5}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := disk.ParseMetadata(b)
		if err != nil {
			return
		}
		if ab, err := m.ABSlots(); err == nil && (ab[0].Boot <= 0 || ab[1].Root <= 0 || ab[0].Name == ab[1].Name) {
			t.Fatalf("accepted slots %+v", ab)
		}
	})
}

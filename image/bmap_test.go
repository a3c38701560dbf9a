package image

import (
	"bytes"
	"math/rand"
	"testing"

	"kiln.dev/kiln/image/disk"
)

func TestReadBmapRoundTrip(t *testing.T) {
	size := int64(BlockSize*9 + 100)
	img := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(img)
	mapped := []bool{true, true, false, false, true, false, false, true, true, true}
	var buf bytes.Buffer
	if err := WriteBmap(&buf, bytes.NewReader(img), size, mapped); err != nil {
		t.Fatal(err)
	}
	b, err := disk.ReadBmap(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b.ImageSize != size || b.BlockSize != BlockSize || len(b.Ranges) != 3 {
		t.Fatalf("%+v", b)
	}
	want := [][2]int64{{0, 1}, {4, 4}, {7, 9}}
	for i, r := range b.Ranges {
		if r.First != want[i][0] || r.Last != want[i][1] || len(r.SHA256) != 64 {
			t.Errorf("range %d = %+v", i, r)
		}
	}
	if off, n := b.Ranges[2].Offset(b.BlockSize, size); off != 7*BlockSize || n != 2*BlockSize+100 {
		t.Errorf("last range %d+%d", off, n)
	}
}

func TestReadBmapRejects(t *testing.T) {
	for _, doc := range []string{
		`<bmap version="3.0"><ImageSize>10</ImageSize><BlockSize>4096</BlockSize></bmap>`,
		`<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlockMap><Range>1</Range><Range>0</Range></BlockMap></bmap>`,
		`<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlockMap><Range>5</Range></BlockMap></bmap>`,
		`<bmap`,
	} {
		if _, err := disk.ReadBmap(bytes.NewReader([]byte(doc))); err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
}

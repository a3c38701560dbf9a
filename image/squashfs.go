package image

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// MakeSquashfs builds a squashfs image of tree in a new file under tmpDir and
// returns its path. go-diskfs writes it; kiln fixes what go-diskfs takes from
// the host: file times and owners (all SOURCE_DATE_EPOCH and root) and the
// superblock's mkfs time, which go-diskfs v1.9.4 takes from the clock.
func MakeSquashfs(tree *Tree, epoch int64, tmpDir string) (string, error) {
	out, err := os.CreateTemp(tmpDir, "squashfs-*.img")
	if err != nil {
		return "", fmt.Errorf("squashfs: %w", err)
	}
	outPath := out.Name()
	fail := func(err error) (string, error) {
		out.Close()
		os.Remove(outPath)
		return "", fmt.Errorf("squashfs: %w", err)
	}
	b := file.New(out, false)
	fsys, err := squashfs.Create(b, 0, 0, 0)
	if err != nil {
		return fail(err)
	}
	ws := fsys.Workspace()
	defer os.RemoveAll(ws)
	if err := tree.Materialize(ws, epoch); err != nil {
		return fail(err)
	}
	zero := uint32(0)
	err = fsys.Finalize(squashfs.FinalizeOptions{
		Compression: &squashfs.CompressorGzip{CompressionLevel: 6, WindowSize: 15,
			Strategies: map[squashfs.GzipStrategy]bool{squashfs.GzipDefault: true}},
		FileUID: &zero, FileGID: &zero,
	})
	if err != nil {
		return fail(err)
	}
	// Superblock: modification_time is the u32 at offset 8.
	var t [4]byte
	binary.LittleEndian.PutUint32(t[:], uint32(epoch))
	if _, err := out.WriteAt(t[:], 8); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	return outPath, nil
}

// copyFileInto copies the file at src into w at off; it fails with ErrNoSpace
// when the file is larger than limit.
func copyFileInto(w io.WriterAt, off, limit int64, src, what string) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() > limit {
		return 0, fmt.Errorf("%s is %d bytes, its partition holds %d: %w", what, fi.Size(), limit, ErrNoSpace)
	}
	n := &Node{Path: filepath.Base(src), Source: src, Size: fi.Size()}
	return fi.Size(), writeNodeAt(w, n, off, 0)
}

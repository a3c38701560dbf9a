package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Output file names inside a build's output directory.
const (
	ImageFile = "image.img"
	XZFile    = "image.img.xz"
	BmapFile  = "image.bmap"
)

// BuildOptions tune Build.
type BuildOptions struct {
	XZ       XZOptions
	NoXZ     bool                                  // skip image.img.xz (tests that only need the .img)
	Progress func(phase string, done, total int64) // optional
}

// PartitionReport describes one partition of a built image.
type PartitionReport struct {
	Index    int    `json:"index"`
	Name     string `json:"name"`
	FS       string `json:"fs"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	Used     int64  `json:"used"` // bytes of filesystem written (squashfs: its length)
	PartUUID string `json:"partuuid"`
	FSUUID   string `json:"fs_uuid,omitempty"`
	Slot     string `json:"slot,omitempty"`
	Label    string `json:"label,omitempty"`
}

// Report is what Build made.
type Report struct {
	Table        string            `json:"table"`
	DiskID       string            `json:"disk_id"`
	Size         int64             `json:"size"`
	MappedBlocks int               `json:"mapped_blocks"`
	Partitions   []PartitionReport `json:"partitions"`
	Files        map[string]string `json:"files"` // output name → sha256
	Tools        []string          `json:"host_tools,omitempty"`
}

// Build writes image.img, image.bmap and image.img.xz for l into outDir. All
// outputs are made in a temporary directory beside outDir and moved into place
// only when everything succeeded: on error nothing is left behind.
func Build(ctx context.Context, l *Layout, outDir string, opts BuildOptions) (*Report, error) {
	if err := l.Resolve(); err != nil {
		return nil, err
	}
	parent := filepath.Dir(filepath.Clean(outDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".kiln-image-*")
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer os.RemoveAll(tmp)
	rep, err := build(ctx, l, tmp, opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for _, name := range []string{ImageFile, BmapFile, XZFile} {
		if _, ok := rep.Files[name]; !ok {
			continue
		}
		if err := os.Rename(filepath.Join(tmp, name), filepath.Join(outDir, name)); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	return rep, nil
}

func build(ctx context.Context, l *Layout, dir string, opts BuildOptions) (*Report, error) {
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	imgPath := filepath.Join(dir, ImageFile)
	f, err := os.OpenFile(imgPath, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(l.Size); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	s := newSink(f, l.Size)
	if err := writeTable(f, s, l); err != nil {
		return nil, err
	}
	rep := &Report{Table: l.Table, Size: l.Size, Files: map[string]string{}}
	if l.Table == "mbr" {
		rep.DiskID = fmt.Sprintf("%08x", l.DiskID())
	} else {
		rep.DiskID = l.DiskGUID()
	}
	for i, p := range l.Partitions {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		progress("partition "+p.Name, int64(i), int64(len(l.Partitions)))
		pr := PartitionReport{Index: i + 1, Name: p.Name, FS: p.FS, Start: p.Start, Size: p.Size,
			PartUUID: l.PartUUID(i), Slot: p.Slot, Label: p.Label}
		sec := &section{w: s, base: p.Start, size: p.Size}
		tree := p.Contents
		if tree == nil {
			tree = NewTree()
		}
		wrap := func(err error) error { return fmt.Errorf("image: partition %s: %w", p.Name, err) }
		switch {
		case p.Image != "" && p.FS == Squashfs:
			n, err := copyFileInto(sec, 0, p.Size, p.Image, "the root filesystem's squashfs")
			if err != nil {
				return nil, wrap(err)
			}
			pr.Used = n
			rep.Tools = appendOnce(rep.Tools, "mksquashfs (squashfs-tools)") // MakeSquashfsDir made it
		case p.Image != "":
			// ext4, made by MakeExt4Dir at the partition's size with
			// l.FSUUID(i).
			pr.FSUUID = l.FSUUID(i)
			fi, err := os.Stat(p.Image)
			if err != nil {
				return nil, wrap(err)
			}
			if fi.Size() > p.Size {
				return nil, wrap(fmt.Errorf("the root filesystem's ext4 is %d bytes, its partition holds %d: %w", fi.Size(), p.Size, ErrNoSpace))
			}
			if err := copySparseInto(sec, 0, p.Image); err != nil {
				return nil, wrap(err)
			}
			pr.Used = p.Size
			rep.Tools = appendOnce(rep.Tools, "mke2fs (e2fsprogs)")
		}
		switch {
		case p.Image != "":
		case p.FS == FAT32:
			vid := l.VolumeID(i)
			pr.FSUUID = fmt.Sprintf("%04X-%04X", vid>>16, vid&0xffff)
			if err := WriteFAT32(sec, p.Size, tree, FATOptions{VolumeID: vid, Label: p.Label,
				HiddenSectors: uint32(p.Start / SectorSize), Epoch: l.Epoch}); err != nil {
				return nil, wrap(err)
			}
			pr.Used = p.Size
		case p.FS == Squashfs:
			sq, err := MakeSquashfs(ctx, tree, l.Epoch, p.Compression, dir)
			if err != nil {
				return nil, wrap(err)
			}
			n, err := copyFileInto(sec, 0, p.Size, sq, "squashfs of "+humanSize(tree.Size())+" of files")
			os.Remove(sq)
			if err != nil {
				return nil, wrap(err)
			}
			pr.Used = n
			rep.Tools = appendOnce(rep.Tools, "mksquashfs (squashfs-tools)")
		case p.FS == Ext4:
			pr.FSUUID = l.FSUUID(i)
			e4, err := MakeExt4(ctx, tree, p.Size, Ext4Options{UUID: pr.FSUUID,
				HashSeed: DeriveUUID(l.Seed, fmt.Sprintf("ext4-hash-seed-%d", i+1)), Label: p.Label, Epoch: l.Epoch}, dir)
			if err != nil {
				return nil, wrap(err)
			}
			err = copySparseInto(sec, 0, e4)
			os.Remove(e4)
			if err != nil {
				return nil, wrap(err)
			}
			pr.Used = p.Size
			rep.Tools = appendOnce(rep.Tools, "mke2fs (e2fsprogs)")
		case p.FS == Raw:
			// Wipe the first 64 KiB so a card's stale filesystem signature
			// cannot be mistaken for a slot's content.
			if _, err := sec.WriteAt(make([]byte, min(64<<10, p.Size)), 0); err != nil {
				return nil, wrap(err)
			}
		}
		rep.Partitions = append(rep.Partitions, pr)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for _, m := range s.mapped {
		if m {
			rep.MappedBlocks++
		}
	}
	progress("checksum", 0, l.Size)
	sum, err := sha256File(f)
	if err != nil {
		return nil, err
	}
	rep.Files[ImageFile] = sum

	bm, err := os.Create(filepath.Join(dir, BmapFile))
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	h := sha256.New()
	if err := WriteBmap(io.MultiWriter(bm, h), f, l.Size, s.mapped); err != nil {
		bm.Close()
		return nil, err
	}
	if err := bm.Close(); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	rep.Files[BmapFile] = hex.EncodeToString(h.Sum(nil))

	if !opts.NoXZ {
		progress("compress", 0, l.Size)
		xf, err := os.Create(filepath.Join(dir, XZFile))
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		h := sha256.New()
		bw := bufio.NewWriterSize(io.MultiWriter(xf, h), 1<<20)
		err = CompressXZ(ctx, bw, io.NewSectionReader(f, 0, l.Size), opts.XZ)
		if err == nil {
			err = bw.Flush()
		}
		if cerr := xf.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		rep.Files[XZFile] = hex.EncodeToString(h.Sum(nil))
	}
	progress("done", l.Size, l.Size)
	return rep, nil
}

func appendOnce(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func sha256File(f io.ReaderAt) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("image: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	iofs "io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// FileDiff is one file that differs inside a partition's filesystem.
type FileDiff struct {
	Path   string `json:"path"`
	Status string `json:"status"` // different, only in rebuild, only in artifact
}

// readerFS is what the filesystems of go-diskfs offer for reading.
type readerFS interface {
	ReadDir(string) ([]iofs.DirEntry, error)
	ReadFile(string) ([]byte, error)
}

// PartitionFiles reads the filesystem (fat32, squashfs or ext4) of the
// partition at start+size of the image file f and returns each regular
// file's SHA-256 by path.
func PartitionFiles(f *os.File, start, size int64, fstype string) (map[string]string, error) {
	b := file.New(f, true)
	var fsys readerFS
	var err error
	switch fstype {
	case "fat32":
		fsys, err = fat32.Read(b, size, start, 512)
	case "squashfs":
		fsys, err = squashfs.Read(b, size, start, 0)
	case "ext4":
		fsys, err = ext4.Read(b, size, start, 512)
	default:
		return nil, fmt.Errorf("attest: no file listing for %q partitions", fstype)
	}
	if err != nil {
		return nil, fmt.Errorf("attest: read %s at %d: %w", fstype, start, err)
	}
	out := map[string]string{}
	var walk func(dir string) error
	walk = func(dir string) error {
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("attest: %s: %w", dir, err)
		}
		for _, e := range ents {
			name := e.Name()
			if name == "." || name == ".." || (fstype == "ext4" && name == "lost+found") {
				continue
			}
			p := path.Join(dir, name)
			if e.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			if !e.Type().IsRegular() {
				out[p] = "(" + e.Type().String() + ")"
				continue
			}
			data, err := fsys.ReadFile(p)
			if err != nil {
				return fmt.Errorf("attest: %s: %w", p, err)
			}
			h := sha256.Sum256(data)
			out[p] = hex.EncodeToString(h[:])
		}
		return nil
	}
	// go-diskfs takes io/fs names (".", "a/b") in some filesystems and
	// rooted ones ("/") in others.
	if err := walk("."); err != nil {
		out = map[string]string{}
		if err2 := walk("/"); err2 != nil {
			return nil, err
		}
	}
	clean := map[string]string{}
	for p, h := range out {
		clean["/"+strings.TrimPrefix(p, "/")] = h
	}
	return clean, nil
}

// DiffFiles lists the files that differ between two file maps.
func DiffFiles(rebuilt, artifact map[string]string) []FileDiff {
	var ds []FileDiff
	for p, h := range rebuilt {
		switch a, ok := artifact[p]; {
		case !ok:
			ds = append(ds, FileDiff{Path: p, Status: OnlyRebuild})
		case a != h:
			ds = append(ds, FileDiff{Path: p, Status: Different})
		}
	}
	for p := range artifact {
		if _, ok := rebuilt[p]; !ok {
			ds = append(ds, FileDiff{Path: p, Status: OnlyArtifact})
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Path < ds[j].Path })
	return ds
}

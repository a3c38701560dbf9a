package image

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"kiln.dev/kiln/image/disk"
)

// Info is what Inspect finds in an image.
type Info struct {
	Path       string          `json:"path"`
	Size       int64           `json:"size"`
	Table      string          `json:"table"`
	DiskID     string          `json:"disk_id"`
	Partitions []PartitionInfo `json:"partitions"`
	// Metadata is kiln.json from the first FAT partition that has one.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// PartitionInfo is one partition as found on disk.
type PartitionInfo struct {
	Number   int    `json:"number"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	Type     string `json:"type"` // MBR type byte ("0x0c") or GPT type GUID
	Name     string `json:"name,omitempty"`
	PartUUID string `json:"partuuid"`
	Bootable bool   `json:"bootable,omitempty"`
	FS       string `json:"fs"` // fat32, squashfs, ext4, empty, unknown, extended
	Label    string `json:"label,omitempty"`
	FSID     string `json:"fs_id,omitempty"`
}

// Inspect reads an image's partition table (disk.ReadTable), recognises
// each partition's filesystem and reads kiln.json from its FAT partition.
func Inspect(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	info := &Info{Path: path, Size: fi.Size()}
	rd := disk.FromReaderAt(f, fi.Size())
	t, err := disk.ReadTable(rd)
	if err != nil {
		return nil, fmt.Errorf("image: %s: %w", path, err)
	}
	info.Table, info.DiskID = t.Kind, t.DiskID
	for _, p := range t.Partitions {
		pi := PartitionInfo{Number: p.Number, Start: p.Start, Size: p.Size, Type: p.Type, Name: p.Name,
			PartUUID: p.PartUUID, Bootable: p.Bootable}
		if p.Extended {
			pi.FS = "extended"
		} else {
			pi.FS, pi.Label, pi.FSID = probeFS(f, p.Start)
		}
		if pi.FS == FAT32 && info.Metadata == nil {
			if m, err := disk.ReadFile(disk.Sub(rd, p), disk.MetadataFile, 1<<20); err == nil && json.Valid(m.Data) {
				info.Metadata = json.RawMessage(m.Data)
			}
		}
		info.Partitions = append(info.Partitions, pi)
	}
	return info, nil
}

// probeFS recognises a filesystem by its superblock.
func probeFS(f io.ReaderAt, start int64) (fs, label, id string) {
	b := make([]byte, 2048)
	n, _ := f.ReadAt(b, start)
	b = b[:n]
	switch {
	case len(b) >= 90 && string(b[82:90]) == "FAT32   ":
		return FAT32, strings.TrimSpace(string(b[71:82])), fmt.Sprintf("%04X-%04X", binary.LittleEndian.Uint16(b[69:]), binary.LittleEndian.Uint16(b[67:]))
	case len(b) >= 4 && string(b[0:4]) == "hsqs":
		return Squashfs, "", ""
	case len(b) >= 1024+0x78 && binary.LittleEndian.Uint16(b[1024+0x38:]) == 0xef53:
		sb := b[1024:]
		u := sb[0x68:0x78]
		return Ext4, strings.TrimRight(string(sb[0x78:0x88]), "\x00"),
			fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	case bytes.Count(b, []byte{0}) == len(b):
		return "empty", "", ""
	}
	return "unknown", "", ""
}

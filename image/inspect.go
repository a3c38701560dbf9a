package image

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition/gpt"
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
	FS       string `json:"fs"` // fat32, squashfs, ext4, empty, unknown
	Label    string `json:"label,omitempty"`
	FSID     string `json:"fs_id,omitempty"`
}

// Inspect reads an image's partition table, recognises each partition's
// filesystem and reads kiln.json from its FAT partition.
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
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("image: %s: read mbr: %w", path, err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil, fmt.Errorf("image: %s: no partition table (no boot signature)", path)
	}
	if mbr[446+4] == 0xee {
		t, err := gpt.Read(file.New(f, true), SectorSize, SectorSize)
		if err != nil {
			return nil, fmt.Errorf("image: %s: %w", path, err)
		}
		info.Table, info.DiskID = "gpt", strings.ToLower(t.GUID)
		for _, p := range t.Partitions {
			if p.Type == gpt.Unused {
				continue
			}
			info.Partitions = append(info.Partitions, PartitionInfo{Number: p.Index, Start: int64(p.Start) * SectorSize,
				Size: int64(p.End-p.Start+1) * SectorSize, Type: strings.ToLower(string(p.Type)), Name: p.Name,
				PartUUID: strings.ToLower(p.GUID), Bootable: p.Attributes&4 != 0})
		}
	} else {
		info.Table = "mbr"
		sig := binary.LittleEndian.Uint32(mbr[440:])
		info.DiskID = fmt.Sprintf("%08x", sig)
		for i := 0; i < 4; i++ {
			e := mbr[446+16*i : 446+16*(i+1)]
			typ := e[4]
			start := int64(binary.LittleEndian.Uint32(e[8:])) * SectorSize
			size := int64(binary.LittleEndian.Uint32(e[12:])) * SectorSize
			if typ == 0 {
				continue
			}
			info.Partitions = append(info.Partitions, PartitionInfo{Number: i + 1, Start: start, Size: size,
				Type: fmt.Sprintf("0x%02x", typ), PartUUID: fmt.Sprintf("%08x-%02x", sig, i+1), Bootable: e[0] == 0x80, FS: "extended"})
			if typ == 0x05 || typ == 0x0f || typ == 0x85 {
				if err := readEBRs(f, info, start, sig); err != nil {
					return nil, fmt.Errorf("image: %s: %w", path, err)
				}
			}
		}
	}
	for i := range info.Partitions {
		p := &info.Partitions[i]
		if p.FS == "extended" && p.Number <= 4 && (p.Type == "0x05" || p.Type == "0x0f" || p.Type == "0x85") {
			continue
		}
		p.FS, p.Label, p.FSID = probeFS(f, p.Start)
		if p.FS == FAT32 && info.Metadata == nil {
			if m, err := readFATFile(f, p.Start, p.Size, "kiln.json"); err == nil && json.Valid(m) {
				info.Metadata = json.RawMessage(m)
			}
		}
	}
	return info, nil
}

func readEBRs(f io.ReaderAt, info *Info, ext int64, sig uint32) error {
	ebr := ext
	for n := 5; n < 5+128; n++ {
		b := make([]byte, 512)
		if _, err := f.ReadAt(b, ebr); err != nil {
			return fmt.Errorf("read ebr: %w", err)
		}
		if b[510] != 0x55 || b[511] != 0xaa {
			return fmt.Errorf("ebr at %d has no signature", ebr)
		}
		e := b[446:462]
		if e[4] != 0 {
			info.Partitions = append(info.Partitions, PartitionInfo{Number: n,
				Start: ebr + int64(binary.LittleEndian.Uint32(e[8:]))*SectorSize,
				Size:  int64(binary.LittleEndian.Uint32(e[12:])) * SectorSize,
				Type:  fmt.Sprintf("0x%02x", e[4]), PartUUID: fmt.Sprintf("%08x-%02x", sig, n), Bootable: e[0] == 0x80})
		}
		next := b[462:478]
		if next[4] == 0 {
			return nil
		}
		ebr = ext + int64(binary.LittleEndian.Uint32(next[8:]))*SectorSize
	}
	return fmt.Errorf("too many logical partitions")
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

func readFATFile(f *os.File, start, size int64, name string) ([]byte, error) {
	fsys, err := fat32.Read(file.New(f, true), size, start, SectorSize)
	if err != nil {
		return nil, err
	}
	return fsys.ReadFile(name)
}

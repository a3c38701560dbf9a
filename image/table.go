package image

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// MBR partition type bytes and GPT partition type GUIDs per filesystem.
func mbrType(fs string) mbr.Type {
	if fs == FAT32 {
		return mbr.Fat32LBA
	}
	return mbr.Linux
}

func gptType(fs string) gpt.Type {
	if fs == FAT32 {
		return gpt.MicrosoftBasicData
	}
	return gpt.LinuxFilesystem
}

// writeTable writes the partition table with go-diskfs and then puts in the
// derived MBR disk signature, which go-diskfs v1.9.4 leaves zero.
func writeTable(f *os.File, s *sink, l *Layout) error {
	switch l.Table {
	case "mbr":
		t := &mbr.Table{LogicalSectorSize: SectorSize, PhysicalSectorSize: SectorSize}
		for i, p := range l.Partitions {
			start, size := uint32(p.Start/SectorSize), uint32(p.Size/SectorSize)
			mp := &mbr.Partition{Index: i + 1, Bootable: p.Bootable, Type: mbrType(p.FS), Start: start, Size: size}
			mp.StartCylinder, mp.StartHead, mp.StartSector = chs(start)
			mp.EndCylinder, mp.EndHead, mp.EndSector = chs(start + size - 1)
			t.Partitions = append(t.Partitions, mp)
		}
		if err := t.Write(f, l.Size); err != nil {
			return fmt.Errorf("image: write mbr: %w", err)
		}
		var id [4]byte
		binary.LittleEndian.PutUint32(id[:], l.DiskID())
		if _, err := f.WriteAt(id[:], 440); err != nil {
			return fmt.Errorf("image: write mbr disk id: %w", err)
		}
		s.mark(0, SectorSize)
	case "gpt":
		t := &gpt.Table{LogicalSectorSize: SectorSize, PhysicalSectorSize: SectorSize, ProtectiveMBR: true, GUID: l.DiskGUID()}
		for i, p := range l.Partitions {
			gp := &gpt.Partition{
				Index: i + 1, Start: uint64(p.Start / SectorSize), End: uint64((p.Start+p.Size)/SectorSize - 1),
				Size: uint64(p.Size), Type: gptType(p.FS), Name: p.Name, GUID: l.PartUUID(i),
			}
			if p.Bootable {
				gp.Attributes = 1 << 2 // legacy BIOS bootable
			}
			t.Partitions = append(t.Partitions, gp)
		}
		if err := t.Write(f, l.Size); err != nil {
			return fmt.Errorf("image: write gpt: %w", err)
		}
		s.mark(0, 34*SectorSize)
		s.mark(l.Size-33*SectorSize, 33*SectorSize)
	}
	return nil
}

// chs encodes an LBA as cylinder/head/sector bytes for 255 heads and 63
// sectors per track, saturating at 1023/254/63 as fdisk does.
func chs(lba uint32) (c, h, s byte) {
	cyl := lba / (255 * 63)
	head := (lba / 63) % 255
	sec := lba%63 + 1
	if cyl > 1023 {
		cyl, head, sec = 1023, 254, 63
	}
	return byte(cyl), byte(head), byte(sec) | byte((cyl>>8)<<6)
}

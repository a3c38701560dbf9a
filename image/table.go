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
		entry := func(index int, boot bool, typ mbr.Type, start, size uint32) *mbr.Partition {
			mp := &mbr.Partition{Index: index, Bootable: boot, Type: typ, Start: start, Size: size}
			mp.StartCylinder, mp.StartHead, mp.StartSector = chs(start)
			mp.EndCylinder, mp.EndHead, mp.EndSector = chs(start + size - 1)
			return mp
		}
		var logical []*Partition
		for i, p := range l.Partitions {
			if l.logical(i) {
				logical = append(logical, p)
				continue
			}
			t.Partitions = append(t.Partitions, entry(i+1, p.Bootable, mbrType(p.FS), uint32(p.Start/SectorSize), uint32(p.Size/SectorSize)))
		}
		if len(logical) > 0 {
			// The extended partition runs from the first EBR to the end of
			// the last logical partition; each EBR sits in the sector just
			// before its partition and links to the next EBR.
			extStart := uint32(logical[0].Start/SectorSize) - 1
			last := logical[len(logical)-1]
			extEnd := uint32((last.Start + last.Size) / SectorSize)
			t.Partitions = append(t.Partitions, entry(4, false, mbr.Type(0x0f), extStart, extEnd-extStart))
			for k, p := range logical {
				ebr := make([]byte, SectorSize)
				lba := uint32(p.Start/SectorSize) - 1
				e1 := entry(0, p.Bootable, mbrType(p.FS), uint32(p.Start/SectorSize), uint32(p.Size/SectorSize))
				copy(ebr[446:], mbrEntryBytes(e1, lba))
				if k+1 < len(logical) {
					n := logical[k+1]
					nlba := uint32(n.Start/SectorSize) - 1
					e2 := entry(0, false, mbr.Type(0x05), nlba, uint32((n.Start+n.Size)/SectorSize)-nlba)
					copy(ebr[462:], mbrEntryBytes(e2, extStart))
				}
				ebr[510], ebr[511] = 0x55, 0xaa
				if _, err := s.WriteAt(ebr, int64(lba)*SectorSize); err != nil {
					return fmt.Errorf("image: write ebr: %w", err)
				}
			}
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

// mbrEntryBytes encodes a partition entry whose start is relative to base
// (EBR entries are relative).
func mbrEntryBytes(p *mbr.Partition, base uint32) []byte {
	b := make([]byte, 16)
	if p.Bootable {
		b[0] = 0x80
	}
	b[1], b[2], b[3] = p.StartHead, p.StartSector, p.StartCylinder
	b[4] = byte(p.Type)
	b[5], b[6], b[7] = p.EndHead, p.EndSector, p.EndCylinder
	binary.LittleEndian.PutUint32(b[8:], p.Start-base)
	binary.LittleEndian.PutUint32(b[12:], p.Size)
	return b
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

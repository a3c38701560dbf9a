package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strings"
	"unicode/utf16"
)

// SectorSize is the logical sector size kiln's tables use.
const SectorSize = 512

var (
	// ErrNoTable means a disk has no partition table at all.
	ErrNoTable = errors.New("no partition table (no 0x55aa boot signature)")
	// ErrTable means a partition table is malformed.
	ErrTable = errors.New("bad partition table")
)

// ReadFunc reads n bytes at off. Parsers never ask for more than their
// documented bounds, so a ReadFunc over a remote device can allocate what it
// is asked for.
type ReadFunc func(off, n int64) ([]byte, error)

// FromReaderAt reads size bytes of r: reads past size fail instead of
// returning short data.
func FromReaderAt(r io.ReaderAt, size int64) ReadFunc {
	return func(off, n int64) ([]byte, error) {
		if off < 0 || n < 0 || off > size || n > size-off {
			return nil, fmt.Errorf("read of %d bytes at %d: past the end (%d bytes)", n, off, size)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil {
			return nil, err
		}
		return b, nil
	}
}

// FromBytes reads b.
func FromBytes(b []byte) ReadFunc {
	return func(off, n int64) ([]byte, error) {
		if off < 0 || n < 0 || off > int64(len(b)) || n > int64(len(b))-off {
			return nil, fmt.Errorf("read of %d bytes at %d: past the end (%d bytes)", n, off, len(b))
		}
		return b[off : off+n], nil
	}
}

// Sub reads the partition p through rd: offsets are relative to its start
// and reads past its end fail.
func Sub(rd ReadFunc, p Partition) ReadFunc {
	return func(off, n int64) ([]byte, error) {
		if off < 0 || n < 0 || off > p.Size || n > p.Size-off {
			return nil, fmt.Errorf("read past partition %d", p.Number)
		}
		return rd(p.Start+off, n)
	}
}

// Partition is one entry of a partition table. Logical partitions of an
// MBR extended partition are numbered from 5, as Linux numbers them.
type Partition struct {
	Number   int    `json:"number"`
	Start    int64  `json:"start"` // bytes
	Size     int64  `json:"size"`  // bytes
	Type     string `json:"type"`  // MBR type byte ("0x0c") or GPT type GUID
	Name     string `json:"name,omitempty"`
	PartUUID string `json:"partuuid"`
	Bootable bool   `json:"bootable,omitempty"`
	// Extended marks an MBR extended partition: a container of logical
	// partitions, not a file system.
	Extended bool `json:"extended,omitempty"`
}

// End is the byte after the partition.
func (p Partition) End() int64 { return p.Start + p.Size }

// Table is a disk's partition table.
type Table struct {
	Kind       string      `json:"table"`   // "mbr" or "gpt"
	DiskID     string      `json:"disk_id"` // MBR disk signature (8 hex digits) or GPT disk GUID
	Partitions []Partition `json:"partitions"`
}

// Partition returns partition number n.
func (t *Table) Partition(n int) (Partition, bool) {
	for _, p := range t.Partitions {
		if p.Number == n {
			return p, true
		}
	}
	return Partition{}, false
}

// Bounds on what ReadTable reads: a hostile table cannot make it allocate
// or loop more than this.
const (
	maxLogical    = 128     // logical partitions in an EBR chain
	maxGPTEntries = 1 << 20 // bytes of GPT partition entries
	maxLBA        = 1 << 53 // sectors (4 EiB): start and end fit an int64 in bytes
)

// ReadTable reads an MBR (with logical partitions) or a GPT partition table.
func ReadTable(rd ReadFunc) (*Table, error) {
	b, err := rd(0, SectorSize)
	if err != nil {
		return nil, fmt.Errorf("partition table: %w", err)
	}
	if len(b) < SectorSize || b[510] != 0x55 || b[511] != 0xaa {
		return nil, ErrNoTable
	}
	for i := 0; i < 4; i++ {
		if b[446+16*i+4] == 0xee {
			return readGPT(rd)
		}
	}
	id := binary.LittleEndian.Uint32(b[440:])
	t := &Table{Kind: "mbr", DiskID: fmt.Sprintf("%08x", id)}
	uuid := func(n int) string { return fmt.Sprintf("%08x-%02x", id, n) }
	extended := false
	for i := 0; i < 4; i++ {
		e := b[446+16*i : 446+16*(i+1)]
		typ, start, n := e[4], binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
		if typ == 0 || n == 0 {
			continue
		}
		p := Partition{Number: i + 1, Start: int64(start) * SectorSize, Size: int64(n) * SectorSize,
			Type: fmt.Sprintf("0x%02x", typ), PartUUID: uuid(i + 1), Bootable: e[0] == 0x80}
		if typ == 0x05 || typ == 0x0f || typ == 0x85 {
			if extended {
				return nil, fmt.Errorf("%w: more than one extended partition", ErrTable)
			}
			extended = true
			p.Extended = true
			logical, err := readEBRs(rd, p, uuid)
			if err != nil {
				return nil, err
			}
			t.Partitions = append(t.Partitions, logical...)
		}
		t.Partitions = append(t.Partitions, p)
	}
	sort.Slice(t.Partitions, func(i, j int) bool { return t.Partitions[i].Number < t.Partitions[j].Number })
	return t, nil
}

// readEBRs follows the chain of extended boot records of the extended
// partition ext. Each logical partition must lie inside ext.
func readEBRs(rd ReadFunc, ext Partition, uuid func(int) string) ([]Partition, error) {
	var parts []Partition
	base := ext.Start / SectorSize
	ebr := base
	seen := map[int64]bool{}
	for num := 5; num < 5+maxLogical; num++ {
		if seen[ebr] {
			return nil, fmt.Errorf("%w: extended boot record chain loops at sector %d", ErrTable, ebr)
		}
		seen[ebr] = true
		b, err := rd(ebr*SectorSize, SectorSize)
		if err != nil {
			return nil, fmt.Errorf("extended boot record at sector %d: %w", ebr, err)
		}
		if len(b) < SectorSize || b[510] != 0x55 || b[511] != 0xaa {
			return nil, fmt.Errorf("%w: extended boot record at sector %d has no signature", ErrTable, ebr)
		}
		e1, e2 := b[446:462], b[462:478]
		if e1[4] != 0 {
			p := Partition{Number: num, Start: (ebr + int64(binary.LittleEndian.Uint32(e1[8:]))) * SectorSize,
				Size: int64(binary.LittleEndian.Uint32(e1[12:])) * SectorSize, Type: fmt.Sprintf("0x%02x", e1[4]),
				PartUUID: uuid(num), Bootable: e1[0] == 0x80}
			if p.Start < ext.Start || p.End() > ext.End() {
				return nil, fmt.Errorf("%w: logical partition %d (bytes %d-%d) lies outside its extended partition", ErrTable, num, p.Start, p.End())
			}
			parts = append(parts, p)
		}
		if e2[4] == 0 {
			return parts, nil
		}
		ebr = base + int64(binary.LittleEndian.Uint32(e2[8:]))
		if ebr*SectorSize >= ext.End() {
			return nil, fmt.Errorf("%w: extended boot record at sector %d lies outside its extended partition", ErrTable, ebr)
		}
	}
	return nil, fmt.Errorf("%w: more than %d logical partitions", ErrTable, maxLogical)
}

// readGPT reads the primary GPT header at LBA 1 and its partition entries,
// checking both CRCs.
func readGPT(rd ReadFunc) (*Table, error) {
	h, err := rd(SectorSize, SectorSize)
	if err != nil {
		return nil, fmt.Errorf("gpt header: %w", err)
	}
	if len(h) < 92 || string(h[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%w: protective MBR but no GPT header", ErrTable)
	}
	hsize := binary.LittleEndian.Uint32(h[12:])
	if hsize < 92 || hsize > SectorSize {
		return nil, fmt.Errorf("%w: gpt header size %d", ErrTable, hsize)
	}
	hdr := append([]byte(nil), h[:hsize]...)
	want := binary.LittleEndian.Uint32(hdr[16:])
	binary.LittleEndian.PutUint32(hdr[16:], 0)
	if crc32.ChecksumIEEE(hdr) != want {
		return nil, fmt.Errorf("%w: gpt header checksum", ErrTable)
	}
	entLBA := binary.LittleEndian.Uint64(h[72:])
	num := binary.LittleEndian.Uint32(h[80:])
	size := binary.LittleEndian.Uint32(h[84:])
	switch {
	case size < 128 || size%8 != 0:
		return nil, fmt.Errorf("%w: gpt entry size %d", ErrTable, size)
	case uint64(num)*uint64(size) > maxGPTEntries:
		return nil, fmt.Errorf("%w: gpt lists %d entries of %d bytes (more than kiln reads, %d bytes)", ErrTable, num, size, maxGPTEntries)
	case entLBA < 2 || entLBA > maxLBA:
		return nil, fmt.Errorf("%w: gpt entries at sector %d", ErrTable, entLBA)
	}
	ents, err := rd(int64(entLBA)*SectorSize, int64(num)*int64(size))
	if err != nil {
		return nil, fmt.Errorf("gpt entries: %w", err)
	}
	if crc32.ChecksumIEEE(ents) != binary.LittleEndian.Uint32(h[88:]) {
		return nil, fmt.Errorf("%w: gpt entries checksum", ErrTable)
	}
	t := &Table{Kind: "gpt", DiskID: GUID(h[56:72])}
	for i := uint32(0); i < num; i++ {
		e := ents[int64(i)*int64(size):]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if last < first || last >= maxLBA {
			return nil, fmt.Errorf("%w: gpt partition %d: sectors %d-%d", ErrTable, i+1, first, last)
		}
		name := make([]uint16, 36)
		for j := range name {
			name[j] = binary.LittleEndian.Uint16(e[56+2*j:])
		}
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		t.Partitions = append(t.Partitions, Partition{Number: int(i) + 1, Start: int64(first) * SectorSize,
			Size: int64(last-first+1) * SectorSize, Type: GUID(e[0:16]), Name: string(utf16.Decode(name)),
			PartUUID: GUID(e[16:32]), Bootable: binary.LittleEndian.Uint64(e[48:])&4 != 0})
	}
	return t, nil
}

// GUID formats a GPT GUID (mixed-endian) in lower case.
func GUID(g []byte) string {
	return strings.ToLower(fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]),
		binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:16]))
}

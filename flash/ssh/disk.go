package ssh

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf16"
)

// Partition is one entry of a device's partition table.
type Partition struct {
	Number   int    `json:"number"`
	Start    int64  `json:"start"` // bytes
	Size     int64  `json:"size"`  // bytes
	PartUUID string `json:"partuuid"`
}

// tableBytes is how much of a disk ParseTable needs: the MBR, the GPT header
// and 128 entries of 128 bytes.
const tableBytes = 34 * 512

// ParseTable reads an MBR or GPT partition table from the first tableBytes of a disk.
// Logical partitions in an MBR extended partition need more of the disk:
// use ReadTable for those.
func ParseTable(b []byte) ([]Partition, error) {
	return ReadTable(func(off, n int64) ([]byte, error) {
		if off+n > int64(len(b)) {
			return nil, fmt.Errorf("partition table: read past %d bytes", len(b))
		}
		return b[off : off+n], nil
	})
}

// ReadTable reads an MBR (with logical partitions, numbered from 5 as
// Linux numbers them) or a GPT partition table through rd.
func ReadTable(rd func(off, n int64) ([]byte, error)) ([]Partition, error) {
	b, err := rd(0, tableBytes)
	if err != nil {
		return nil, err
	}
	if len(b) < 1024 || b[510] != 0x55 || b[511] != 0xaa {
		return nil, errors.New("no partition table (no 0x55aa boot signature)")
	}
	if b[446+4] == 0xee {
		return parseGPT(b)
	}
	id := binary.LittleEndian.Uint32(b[440:])
	uuid := func(n int) string { return fmt.Sprintf("%08x-%02x", id, n) }
	var parts []Partition
	for i := 0; i < 4; i++ {
		e := b[446+16*i:]
		typ, start, n := e[4], binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
		if typ == 0 || n == 0 {
			continue
		}
		if typ == 0x05 || typ == 0x0f || typ == 0x85 {
			logical, err := readEBRs(rd, int64(start), uuid)
			if err != nil {
				return nil, err
			}
			parts = append(parts, logical...)
			continue
		}
		parts = append(parts, Partition{Number: i + 1, Start: int64(start) * 512, Size: int64(n) * 512, PartUUID: uuid(i + 1)})
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].Number < parts[j].Number })
	return parts, nil
}

// readEBRs follows the chain of extended boot records of an extended
// partition starting at sector ext.
func readEBRs(rd func(off, n int64) ([]byte, error), ext int64, uuid func(int) string) ([]Partition, error) {
	var parts []Partition
	ebr := ext
	for num := 5; num < 5+128; num++ {
		b, err := rd(ebr*512, 512)
		if err != nil {
			return nil, fmt.Errorf("extended boot record at sector %d: %w", ebr, err)
		}
		if b[510] != 0x55 || b[511] != 0xaa {
			return nil, fmt.Errorf("extended boot record at sector %d: no signature", ebr)
		}
		e1, e2 := b[446:462], b[462:478]
		if e1[4] != 0 {
			start := ebr + int64(binary.LittleEndian.Uint32(e1[8:]))
			parts = append(parts, Partition{Number: num, Start: start * 512, Size: int64(binary.LittleEndian.Uint32(e1[12:])) * 512, PartUUID: uuid(num)})
		}
		if e2[4] == 0 {
			return parts, nil
		}
		ebr = ext + int64(binary.LittleEndian.Uint32(e2[8:]))
	}
	return nil, errors.New("extended partition: EBR chain too long")
}

func parseGPT(b []byte) ([]Partition, error) {
	h := b[512:]
	if len(b) < tableBytes || string(h[:8]) != "EFI PART" {
		return nil, errors.New("protective MBR but no GPT header")
	}
	entLBA := binary.LittleEndian.Uint64(h[72:])
	num := binary.LittleEndian.Uint32(h[80:])
	size := binary.LittleEndian.Uint32(h[84:])
	var parts []Partition
	for i := uint32(0); i < num; i++ {
		off := int64(entLBA)*512 + int64(i)*int64(size)
		if off+128 > int64(len(b)) {
			break
		}
		e := b[off:]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		parts = append(parts, Partition{Number: int(i) + 1, Start: int64(first) * 512, Size: int64(last-first+1) * 512,
			PartUUID: guidString(e[16:32])})
	}
	return parts, nil
}

func guidString(g []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]),
		binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:16])
}

// extent is a byte range inside a partition.
type extent struct{ Off, Len int64 }

// fatFile is a file found in a FAT file system's root directory.
type fatFile struct {
	Data    []byte
	Extents []extent // where Data lives, in order, relative to the partition
}

// readerAt reads bytes of a partition.
type readerAt func(off, n int64) ([]byte, error)

// readFATFile finds name (case-insensitive, long or 8.3) in the root
// directory of the FAT12/16/32 file system read by rd.
func readFATFile(rd readerAt, name string) (*fatFile, error) {
	bs, err := rd(0, 512)
	if err != nil {
		return nil, err
	}
	if bs[510] != 0x55 || bs[511] != 0xaa {
		return nil, errors.New("fat: no boot sector signature")
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	spc := int64(bs[13])
	rsvd := int64(binary.LittleEndian.Uint16(bs[14:]))
	nfats := int64(bs[16])
	rootEnt := int64(binary.LittleEndian.Uint16(bs[17:]))
	tot := int64(binary.LittleEndian.Uint16(bs[19:]))
	if tot == 0 {
		tot = int64(binary.LittleEndian.Uint32(bs[32:]))
	}
	fatSz := int64(binary.LittleEndian.Uint16(bs[22:]))
	if fatSz == 0 {
		fatSz = int64(binary.LittleEndian.Uint32(bs[36:]))
	}
	if bps == 0 || spc == 0 || nfats == 0 || fatSz == 0 {
		return nil, errors.New("fat: bad BIOS parameter block")
	}
	rootSecs := (rootEnt*32 + bps - 1) / bps
	firstData := rsvd + nfats*fatSz + rootSecs
	clusters := (tot - firstData) / spc
	bits := 32
	switch {
	case clusters < 4085:
		bits = 12
	case clusters < 65525:
		bits = 16
	}
	fat, err := rd(rsvd*bps, fatSz*bps)
	if err != nil {
		return nil, err
	}
	next := func(c uint32) uint32 {
		switch bits {
		case 12:
			v := binary.LittleEndian.Uint16(fat[c+c/2:])
			if c&1 == 1 {
				return uint32(v >> 4)
			}
			return uint32(v & 0xfff)
		case 16:
			return uint32(binary.LittleEndian.Uint16(fat[2*c:]))
		}
		return binary.LittleEndian.Uint32(fat[4*c:]) & 0x0fffffff
	}
	eoc := map[int]uint32{12: 0xff8, 16: 0xfff8, 32: 0x0ffffff8}[bits]
	clusterBytes := spc * bps
	chain := func(c uint32) ([]extent, error) {
		var ex []extent
		for n := 0; c >= 2 && c < eoc; n++ {
			if int64(c) > clusters+1 || n > int(clusters) {
				return nil, errors.New("fat: broken cluster chain")
			}
			off := (firstData + int64(c-2)*spc) * bps
			if k := len(ex); k > 0 && ex[k-1].Off+ex[k-1].Len == off {
				ex[k-1].Len += clusterBytes
			} else {
				ex = append(ex, extent{off, clusterBytes})
			}
			c = next(c)
		}
		return ex, nil
	}
	read := func(ex []extent, limit int64) ([]byte, error) {
		var out []byte
		for _, e := range ex {
			b, err := rd(e.Off, e.Len)
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
		if limit >= 0 && int64(len(out)) > limit {
			out = out[:limit]
		}
		return out, nil
	}
	var dir []byte
	if bits == 32 {
		ex, err := chain(binary.LittleEndian.Uint32(bs[44:]))
		if err != nil {
			return nil, err
		}
		if dir, err = read(ex, -1); err != nil {
			return nil, err
		}
	} else if dir, err = rd((rsvd+nfats*fatSz)*bps, rootSecs*bps); err != nil {
		return nil, err
	}
	var lfn []uint16
	for i := 0; i+32 <= len(dir); i += 32 {
		e := dir[i : i+32]
		switch {
		case e[0] == 0:
			return nil, fmt.Errorf("fat: %s: %w", name, errNotFound)
		case e[0] == 0xe5:
			lfn = nil
			continue
		case e[11] == 0x0f:
			var part []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for j := r[0]; j < r[1]; j += 2 {
					part = append(part, binary.LittleEndian.Uint16(e[j:]))
				}
			}
			lfn = append(part, lfn...)
			continue
		}
		long := ""
		if len(lfn) > 0 {
			for k, c := range lfn {
				if c == 0 {
					lfn = lfn[:k]
					break
				}
			}
			long = string(utf16.Decode(lfn))
		}
		lfn = nil
		short := strings.TrimSpace(string(e[0:8]))
		if ext := strings.TrimSpace(string(e[8:11])); ext != "" {
			short += "." + ext
		}
		if !strings.EqualFold(long, name) && !strings.EqualFold(short, name) {
			continue
		}
		first := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
		size := int64(binary.LittleEndian.Uint32(e[28:]))
		ex, err := chain(first)
		if err != nil {
			return nil, err
		}
		data, err := read(ex, size)
		if err != nil {
			return nil, err
		}
		// Trim the extents to the file's size.
		var kept []extent
		left := size
		for _, x := range ex {
			if left <= 0 {
				break
			}
			if x.Len > left {
				x.Len = left
			}
			kept = append(kept, x)
			left -= x.Len
		}
		return &fatFile{Data: data, Extents: kept}, nil
	}
	return nil, fmt.Errorf("fat: %s: %w", name, errNotFound)
}

var errNotFound = errors.New("file not found")

// patchFATFile replaces old with new (same length) in a file's data and
// returns the changed byte ranges as partition-relative writes.
func patchFATFile(f *fatFile, old, repl string) (map[int64][]byte, []byte, error) {
	if len(old) != len(repl) {
		return nil, nil, fmt.Errorf("in-place patch must keep the length (%q → %q)", old, repl)
	}
	i := bytes.Index(f.Data, []byte(old))
	if i < 0 {
		return nil, nil, fmt.Errorf("%q not found", old)
	}
	data := append([]byte(nil), f.Data...)
	copy(data[i:], repl)
	writes := map[int64][]byte{}
	pos := int64(0)
	for _, x := range f.Extents {
		lo, hi := max(int64(i), pos), min(int64(i+len(old)), pos+x.Len)
		if lo < hi {
			writes[x.Off+(lo-pos)] = data[lo:hi]
		}
		pos += x.Len
	}
	return writes, data, nil
}

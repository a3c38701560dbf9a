package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// ErrNotFound means a FAT root directory has no file of that name.
var ErrNotFound = errors.New("file not found")

// ErrFAT means a FAT file system is malformed.
var ErrFAT = errors.New("bad FAT file system")

// Extent is a byte range inside a partition.
type Extent struct{ Off, Len int64 }

// File is a file read from a FAT root directory.
type File struct {
	Data    []byte
	Extents []Extent // where Data lives, in order, relative to the partition
}

// Bounds on what ReadFile reads.
const (
	maxFATBytes = 32 << 20 // one FAT (a 32 GiB FAT32 card has 4 MiB)
	maxDirBytes = 4 << 20  // the root directory
)

// ReadFile reads name (case-insensitive, long or 8.3) from the root
// directory of the FAT12/16/32 file system read by rd. Files larger than
// max bytes are refused.
func ReadFile(rd ReadFunc, name string, max int64) (*File, error) {
	bs, err := rd(0, SectorSize)
	if err != nil {
		return nil, fmt.Errorf("fat: boot sector: %w", err)
	}
	if len(bs) < SectorSize || bs[510] != 0x55 || bs[511] != 0xaa {
		return nil, fmt.Errorf("%w: no boot sector signature", ErrFAT)
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
	switch {
	case bps != 512 && bps != 1024 && bps != 2048 && bps != 4096,
		spc == 0 || spc&(spc-1) != 0, rsvd == 0, nfats == 0 || nfats > 4, fatSz == 0:
		return nil, fmt.Errorf("%w: bad BIOS parameter block", ErrFAT)
	case fatSz*bps > maxFATBytes:
		return nil, fmt.Errorf("%w: a FAT of %d bytes (more than kiln reads, %d)", ErrFAT, fatSz*bps, maxFATBytes)
	}
	rootSecs := (rootEnt*32 + bps - 1) / bps
	firstData := rsvd + nfats*fatSz + rootSecs
	if tot <= firstData {
		return nil, fmt.Errorf("%w: %d sectors, data starts at %d", ErrFAT, tot, firstData)
	}
	clusters := (tot - firstData) / spc
	bits := int64(32)
	switch {
	case clusters < 4085:
		bits = 12
	case clusters < 65525:
		bits = 16
	}
	// The FAT must describe every cluster.
	if (clusters+2)*bits > fatSz*bps*8 {
		return nil, fmt.Errorf("%w: %d clusters but the FAT holds fewer", ErrFAT, clusters)
	}
	fat, err := rd(rsvd*bps, fatSz*bps)
	if err != nil {
		return nil, fmt.Errorf("fat: read FAT: %w", err)
	}
	next := func(c int64) int64 {
		switch bits {
		case 12:
			v := binary.LittleEndian.Uint16(fat[c+c/2:])
			if c&1 == 1 {
				return int64(v >> 4)
			}
			return int64(v & 0xfff)
		case 16:
			return int64(binary.LittleEndian.Uint16(fat[2*c:]))
		}
		return int64(binary.LittleEndian.Uint32(fat[4*c:]) & 0x0fffffff)
	}
	eoc := map[int64]int64{12: 0xff8, 16: 0xfff8, 32: 0x0ffffff8}[bits]
	clusterBytes := spc * bps
	// chain follows a cluster chain, at most limit bytes long.
	chain := func(c int64, limit int64) ([]Extent, error) {
		var ex []Extent
		total := int64(0)
		for c >= 2 && c < eoc {
			if c > clusters+1 {
				return nil, fmt.Errorf("%w: cluster %d past the last (%d)", ErrFAT, c, clusters+1)
			}
			if total += clusterBytes; total > limit+clusterBytes {
				return nil, fmt.Errorf("%w: cluster chain longer than %d bytes", ErrFAT, limit)
			}
			off := (firstData + (c-2)*spc) * bps
			if k := len(ex); k > 0 && ex[k-1].Off+ex[k-1].Len == off {
				ex[k-1].Len += clusterBytes
			} else {
				ex = append(ex, Extent{off, clusterBytes})
			}
			c = next(c)
		}
		return ex, nil
	}
	read := func(ex []Extent) ([]byte, error) {
		var out []byte
		for _, e := range ex {
			b, err := rd(e.Off, e.Len)
			if err != nil {
				return nil, fmt.Errorf("fat: read: %w", err)
			}
			out = append(out, b...)
		}
		return out, nil
	}
	var dir []byte
	if bits == 32 {
		ex, err := chain(int64(binary.LittleEndian.Uint32(bs[44:])&0x0fffffff), maxDirBytes)
		if err != nil {
			return nil, fmt.Errorf("fat: root directory: %w", err)
		}
		if dir, err = read(ex); err != nil {
			return nil, err
		}
	} else if dir, err = rd((rsvd+nfats*fatSz)*bps, rootSecs*bps); err != nil {
		return nil, fmt.Errorf("fat: root directory: %w", err)
	}
	var lfn []uint16
	for i := 0; i+32 <= len(dir); i += 32 {
		e := dir[i : i+32]
		switch {
		case e[0] == 0:
			return nil, fmt.Errorf("fat: %s: %w", name, ErrNotFound)
		case e[0] == 0xe5:
			lfn = nil
			continue
		case e[11] == 0x0f:
			if len(lfn) > 20*13 {
				lfn = nil // longer than any name: ignore the run
			}
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
		if e[11]&0x18 != 0 { // a directory or the volume label
			continue
		}
		short := strings.TrimSpace(string(e[0:8]))
		if ext := strings.TrimSpace(string(e[8:11])); ext != "" {
			short += "." + ext
		}
		if !strings.EqualFold(long, name) && !strings.EqualFold(short, name) {
			continue
		}
		first := int64(binary.LittleEndian.Uint16(e[20:]))<<16 | int64(binary.LittleEndian.Uint16(e[26:]))
		if bits != 32 {
			first &= 0xffff
		}
		size := int64(binary.LittleEndian.Uint32(e[28:]))
		if size > max {
			return nil, fmt.Errorf("%w: %s is %d bytes (kiln reads at most %d)", ErrFAT, name, size, max)
		}
		ex, err := chain(first, size)
		if err != nil {
			return nil, fmt.Errorf("fat: %s: %w", name, err)
		}
		// Trim the extents to the file's size.
		var kept []Extent
		left := size
		for _, x := range ex {
			if left <= 0 {
				break
			}
			x.Len = min(x.Len, left)
			kept = append(kept, x)
			left -= x.Len
		}
		if left > 0 {
			return nil, fmt.Errorf("%w: %s is %d bytes but its clusters hold %d", ErrFAT, name, size, size-left)
		}
		data, err := read(kept)
		if err != nil {
			return nil, err
		}
		return &File{Data: data, Extents: kept}, nil
	}
	return nil, fmt.Errorf("fat: %s: %w", name, ErrNotFound)
}

// Patch replaces old with repl (of the same length) in the file's data and
// returns the changed byte ranges as partition-relative writes, and the new
// data.
func (f *File) Patch(old, repl string) (map[int64][]byte, []byte, error) {
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

package image

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf16"
)

// FATOptions are the identity of a FAT32 filesystem.
type FATOptions struct {
	VolumeID      uint32 // volume serial number
	Label         string // up to 11 characters; "" is "NO NAME"
	HiddenSectors uint32 // sectors before the partition (its start LBA)
	Epoch         int64  // every timestamp
}

const (
	fatReserved    = 32
	fatCount       = 2
	fatMinClusters = 65525
	attrDir        = 0x10
	attrArchive    = 0x20
	attrVolume     = 0x08
	attrLFN        = 0x0f
	fatEOC         = 0x0fffffff
)

type fatGeometry struct {
	totalSectors uint32
	spc          uint32 // sectors per cluster
	fatSectors   uint32
	clusters     uint32
}

func fatGeometryFor(size int64) (fatGeometry, error) {
	total := size / SectorSize
	if total > 0xffffffff {
		return fatGeometry{}, fmt.Errorf("fat32: partition of %d bytes is too large: %w", size, ErrLayout)
	}
	// Cluster sizes as mkfs.fat chooses them, shrunk until FAT32's minimum
	// cluster count is met.
	var spc int64
	switch {
	case size <= 260*mib:
		spc = 1
	case size <= 8<<30:
		spc = 8
	case size <= 16<<30:
		spc = 16
	case size <= 32<<30:
		spc = 32
	default:
		spc = 64
	}
	for ; spc >= 1; spc /= 2 {
		fatSz := ((total-fatReserved)/spc + 2 + 127) / 128
		clusters := (total - fatReserved - fatCount*fatSz) / spc
		if clusters >= fatMinClusters && clusters <= 0x0ffffff5 {
			return fatGeometry{uint32(total), uint32(spc), uint32(fatSz), uint32(clusters)}, nil
		}
	}
	return fatGeometry{}, fmt.Errorf("fat32: partition of %d bytes is too small for FAT32 (needs about 33 MiB): %w", size, ErrLayout)
}

// fatEntry is a directory entry being laid out.
type fatEntry struct {
	node     *Node
	short    [11]byte
	lfn      []uint16 // nil: the short name is the name
	cluster  uint32
	clusters uint32
	children []*fatEntry
	parent   *fatEntry
}

func (e *fatEntry) slots() int {
	if e.lfn == nil {
		return 1
	}
	return 1 + (len(e.lfn)+12)/13
}

// WriteFAT32 writes a FAT32 filesystem holding tree into w, which is the
// partition (size bytes). The result passes fsck.vfat -n: correct ".."
// entries (cluster 0 for the root), an exact FSInfo free count and next-free
// hint, the hidden-sector count of the partition, a backup boot sector, and
// long file names with matching checksums. Allocation is contiguous in path
// order, so the output depends only on the tree and opts.
func WriteFAT32(w io.WriterAt, size int64, tree *Tree, opts FATOptions) error {
	g, err := fatGeometryFor(size)
	if err != nil {
		return err
	}
	label, err := fatLabel(opts.Label)
	if err != nil {
		return err
	}
	stamp := dosTime(opts.Epoch)
	clusterBytes := int64(g.spc) * SectorSize

	// Lay the tree out: names, then clusters in path order.
	root := &fatEntry{node: tree.Get("")}
	var order []*fatEntry
	var build func(e *fatEntry) error
	build = func(e *fatEntry) error {
		order = append(order, e)
		used := map[string]bool{}
		lower := map[string]string{}
		for _, c := range tree.Children(e.node.Path) {
			name := baseName(c.Path)
			if c.Link != "" || c.Char != nil {
				return fmt.Errorf("fat32: %s: FAT holds only files and directories: %w", c.Path, ErrBadName)
			}
			if err := checkLongName(name); err != nil {
				return fmt.Errorf("fat32: %q: %w", c.Path, err)
			}
			key := strings.ToUpper(name)
			if other, ok := lower[key]; ok {
				return fmt.Errorf("fat32: %q and %q differ only in case: %w", other, name, ErrBadName)
			}
			lower[key] = name
			ce := &fatEntry{node: c, parent: e}
			ce.short, ce.lfn = shortName(name, used)
			e.children = append(e.children, ce)
		}
		for _, c := range e.children {
			if c.node.Dir {
				if err := build(c); err != nil {
					return err
				}
			} else {
				order = append(order, c)
			}
		}
		return nil
	}
	if err := build(root); err != nil {
		return err
	}
	next := uint32(2)
	for _, e := range order {
		var bytes int64
		if e.node.Dir {
			n := 0
			if e == root {
				if label != "" {
					n++
				}
			} else {
				n += 2 // "." and ".."
			}
			for _, c := range e.children {
				n += c.slots()
			}
			if n > 65536 {
				return fmt.Errorf("fat32: directory %q has too many entries: %w", e.node.Path, ErrBadName)
			}
			bytes = int64(n) * 32
			if bytes == 0 {
				bytes = 1 // a directory always has a cluster
			}
		} else {
			if e.node.Size > 0xffffffff {
				return fmt.Errorf("fat32: %s: %d bytes is more than a FAT file can hold: %w", e.node.Path, e.node.Size, ErrNoSpace)
			}
			bytes = e.node.Size
		}
		cl := uint32((bytes + clusterBytes - 1) / clusterBytes)
		if cl == 0 {
			continue
		}
		if uint64(next-2)+uint64(cl) > uint64(g.clusters) {
			return fmt.Errorf("fat32: %d bytes of files do not fit a %d-byte partition: %w", tree.Size(), size, ErrNoSpace)
		}
		e.cluster, e.clusters = next, cl
		next += cl
	}

	// The FAT: contiguous chains.
	fat := make([]byte, int(g.fatSectors)*SectorSize)
	binary.LittleEndian.PutUint32(fat[0:], 0x0ffffff8)
	binary.LittleEndian.PutUint32(fat[4:], 0x0fffffff)
	for _, e := range order {
		for i := uint32(0); i < e.clusters; i++ {
			v := e.cluster + i + 1
			if i == e.clusters-1 {
				v = fatEOC
			}
			binary.LittleEndian.PutUint32(fat[4*(e.cluster+i):], v)
		}
	}
	used := next - 2
	free := g.clusters - used
	nextFree := next
	if free == 0 {
		nextFree = 0xffffffff
	}

	// Reserved region: boot sector, FSInfo, their backups.
	res := make([]byte, fatReserved*SectorSize)
	boot := res[0:512]
	copy(boot[0:], []byte{0xeb, 0x58, 0x90})
	copy(boot[3:], "kiln    ")
	binary.LittleEndian.PutUint16(boot[11:], SectorSize)
	boot[13] = byte(g.spc)
	binary.LittleEndian.PutUint16(boot[14:], fatReserved)
	boot[16] = fatCount
	boot[21] = 0xf8
	binary.LittleEndian.PutUint16(boot[24:], 63)
	binary.LittleEndian.PutUint16(boot[26:], 255)
	binary.LittleEndian.PutUint32(boot[28:], opts.HiddenSectors)
	binary.LittleEndian.PutUint32(boot[32:], g.totalSectors)
	binary.LittleEndian.PutUint32(boot[36:], g.fatSectors)
	binary.LittleEndian.PutUint32(boot[44:], 2) // root cluster
	binary.LittleEndian.PutUint16(boot[48:], 1) // FSInfo
	binary.LittleEndian.PutUint16(boot[50:], 6) // backup boot sector
	boot[64] = 0x80
	boot[66] = 0x29
	binary.LittleEndian.PutUint32(boot[67:], opts.VolumeID)
	bl := label
	if bl == "" {
		bl = "NO NAME"
	}
	copy(boot[71:82], fmt.Sprintf("%-11s", bl))
	copy(boot[82:90], "FAT32   ")
	// A boot stub that halts: this is a data partition, not a PC boot disk.
	copy(boot[90:], []byte{0xfa, 0xf4, 0xeb, 0xfd})
	boot[510], boot[511] = 0x55, 0xaa
	info := res[512:1024]
	binary.LittleEndian.PutUint32(info[0:], 0x41615252)
	binary.LittleEndian.PutUint32(info[484:], 0x61417272)
	binary.LittleEndian.PutUint32(info[488:], free)
	binary.LittleEndian.PutUint32(info[492:], nextFree)
	binary.LittleEndian.PutUint32(info[508:], 0xaa550000)
	// Sector 2 carries the boot signature too (the FAT32 boot area is three sectors).
	res[2*512+510], res[2*512+511] = 0x55, 0xaa
	copy(res[6*512:9*512], res[0:3*512])
	if _, err := w.WriteAt(res, 0); err != nil {
		return fmt.Errorf("fat32: write boot sector: %w", err)
	}
	fatStart := int64(fatReserved) * SectorSize
	for i := int64(0); i < fatCount; i++ {
		if _, err := w.WriteAt(fat, fatStart+i*int64(len(fat))); err != nil {
			return fmt.Errorf("fat32: write FAT: %w", err)
		}
	}
	dataStart := fatStart + fatCount*int64(len(fat))
	clusterOff := func(c uint32) int64 { return dataStart + int64(c-2)*clusterBytes }

	for _, e := range order {
		if e.clusters == 0 {
			continue
		}
		if e.node.Dir {
			buf := make([]byte, int64(e.clusters)*clusterBytes)
			p := 0
			put := func(ent []byte) { copy(buf[p:], ent); p += 32 }
			if e == root {
				if label != "" {
					var n [11]byte
					copy(n[:], fmt.Sprintf("%-11s", label))
					put(dirEntry(n, attrVolume, 0, 0, stamp))
				}
			} else {
				var dot, dotdot [11]byte
				copy(dot[:], ".          ")
				copy(dotdot[:], "..         ")
				put(dirEntry(dot, attrDir, e.cluster, 0, stamp))
				pc := e.parent.cluster
				if e.parent == root {
					pc = 0 // ".." of a first-level directory points to the root as cluster 0
				}
				put(dirEntry(dotdot, attrDir, pc, 0, stamp))
			}
			for _, c := range e.children {
				for _, l := range lfnEntries(c.lfn, c.short) {
					put(l)
				}
				attr, size := byte(attrArchive), uint32(c.node.Size)
				if c.node.Dir {
					attr, size = attrDir, 0
				}
				put(dirEntry(c.short, attr, c.cluster, size, stamp))
			}
			if _, err := w.WriteAt(buf, clusterOff(e.cluster)); err != nil {
				return fmt.Errorf("fat32: write directory %q: %w", e.node.Path, err)
			}
			continue
		}
		if err := writeNodeAt(w, e.node, clusterOff(e.cluster), int64(e.clusters)*clusterBytes); err != nil {
			return fmt.Errorf("fat32: %w", err)
		}
	}
	return nil
}

// writeNodeAt copies a file's content to w at off, zero-padding to span bytes.
func writeNodeAt(w io.WriterAt, n *Node, off, span int64) error {
	r, err := n.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	buf := make([]byte, 1<<20)
	var done int64
	for {
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			if done+int64(k) > n.Size {
				return fmt.Errorf("%s: grew while being copied", n.Path)
			}
			if _, werr := w.WriteAt(buf[:k], off+done); werr != nil {
				return werr
			}
			done += int64(k)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", n.Path, err)
		}
	}
	if done != n.Size {
		return fmt.Errorf("%s: shrank while being copied", n.Path)
	}
	if pad := span - done; pad > 0 {
		if _, err := w.WriteAt(make([]byte, pad), off+done); err != nil {
			return err
		}
	}
	return nil
}

func dirEntry(name [11]byte, attr byte, cluster, size uint32, stamp [2]uint16) []byte {
	b := make([]byte, 32)
	copy(b, name[:])
	b[11] = attr
	binary.LittleEndian.PutUint16(b[14:], stamp[1])
	binary.LittleEndian.PutUint16(b[16:], stamp[0])
	binary.LittleEndian.PutUint16(b[18:], stamp[0])
	binary.LittleEndian.PutUint16(b[20:], uint16(cluster>>16))
	binary.LittleEndian.PutUint16(b[22:], stamp[1])
	binary.LittleEndian.PutUint16(b[24:], stamp[0])
	binary.LittleEndian.PutUint16(b[26:], uint16(cluster))
	binary.LittleEndian.PutUint32(b[28:], size)
	return b
}

// dosTime converts a Unix time to FAT's (date, time), clamped to 1980–2107.
func dosTime(epoch int64) [2]uint16 {
	t := time.Unix(epoch, 0).UTC()
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if t.Year() > 2107 {
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	d := uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm := uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	return [2]uint16{d, tm}
}

func lfnChecksum(short [11]byte) byte {
	var s byte
	for _, c := range short {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

// lfnEntries returns the long-name entries that precede a short entry, in
// on-disk order (highest sequence number first).
func lfnEntries(name []uint16, short [11]byte) [][]byte {
	if name == nil {
		return nil
	}
	n := (len(name) + 12) / 13
	padded := make([]uint16, n*13)
	for i := range padded {
		switch {
		case i < len(name):
			padded[i] = name[i]
		case i == len(name):
			padded[i] = 0
		default:
			padded[i] = 0xffff
		}
	}
	sum := lfnChecksum(short)
	out := make([][]byte, 0, n)
	for seq := n; seq >= 1; seq-- {
		b := make([]byte, 32)
		b[0] = byte(seq)
		if seq == n {
			b[0] |= 0x40
		}
		b[11] = attrLFN
		b[13] = sum
		part := padded[(seq-1)*13 : seq*13]
		offs := []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
		for i, o := range offs {
			binary.LittleEndian.PutUint16(b[o:], part[i])
		}
		out = append(out, b)
	}
	return out
}

// checkLongName reports whether FAT's long file names can hold name.
func checkLongName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("empty or dot name: %w", ErrBadName)
	}
	if strings.HasSuffix(name, ".") || strings.HasSuffix(name, " ") {
		return fmt.Errorf("trailing dot or space: %w", ErrBadName)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("character %q is not allowed in FAT names: %w", r, ErrBadName)
		}
	}
	if len(utf16.Encode([]rune(name))) > 255 {
		return fmt.Errorf("longer than 255 characters: %w", ErrBadName)
	}
	return nil
}

const shortSpecial = "!#$%&'()-@^_`{}~"

func shortChar(r rune) (byte, bool) {
	switch {
	case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return byte(r), true
	case r >= 'a' && r <= 'z':
		return byte(r - 'a' + 'A'), true
	case r < 0x80 && strings.ContainsRune(shortSpecial, r):
		return byte(r), true
	}
	return '_', false
}

// shortName returns the 8.3 name for name, unique among used (which it
// updates), and the UTF-16 long name when one is needed.
func shortName(name string, used map[string]bool) ([11]byte, []uint16) {
	var s [11]byte
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	exact := len(base) >= 1 && len(base) <= 8 && len(ext) <= 3 && !strings.Contains(base, ".")
	conv := func(in string, max int) string {
		var b []byte
		for _, r := range in {
			if r == ' ' || r == '.' {
				exact = false
				continue
			}
			c, ok := shortChar(r)
			if !ok || (r >= 'a' && r <= 'z') {
				exact = false
			}
			b = append(b, c)
		}
		if len(b) > max {
			exact = false
		}
		return string(b)
	}
	b := conv(base, 8)
	e := conv(ext, 3)
	if len(e) > 3 {
		e = e[:3]
	}
	if exact && !used[b+"."+e] {
		used[b+"."+e] = true
		copy(s[:], fmt.Sprintf("%-8s%-3s", b, e))
		if s[0] == 0xe5 {
			s[0] = 0x05
		}
		return s, nil
	}
	if b == "" {
		b = "_"
	}
	for n := 1; ; n++ {
		tail := fmt.Sprintf("~%d", n)
		bb := b
		if len(bb) > 8-len(tail) {
			bb = bb[:8-len(tail)]
		}
		key := bb + tail + "." + e
		if !used[key] {
			used[key] = true
			copy(s[:], fmt.Sprintf("%-8s%-3s", bb+tail, e))
			return s, utf16.Encode([]rune(name))
		}
	}
}

func fatLabel(l string) (string, error) {
	if l == "" {
		return "", nil
	}
	u := strings.ToUpper(l)
	if len(u) > 11 {
		return "", fmt.Errorf("fat32: volume label %q is longer than 11 characters: %w", l, ErrBadName)
	}
	for _, r := range u {
		if _, ok := shortChar(r); !ok && r != ' ' {
			return "", fmt.Errorf("fat32: volume label %q: character %q: %w", l, r, ErrBadName)
		}
	}
	return u, nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

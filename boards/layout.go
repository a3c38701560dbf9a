package boards

import (
	"fmt"
	"strconv"
	"strings"
)

// Pages returns the memory's erase units (pages or sectors) in address order,
// each as a Memory whose Size and Page are the unit's size.
//
// When Layout is set it is read in DfuSe notation: comma-separated groups of
// COUNT*SIZE followed by a unit (' ' bytes, 'K' KiB, 'M' MiB) and a type
// letter a-g (the DfuSe read/erase/write bits), for example
// "04*016Kg,01*064Kg,03*128Kg" (four 16 KiB sectors, one of 64 KiB, three of
// 128 KiB). A full DfuSe descriptor ("@Internal Flash /0x08000000/04*016Kg,...")
// is accepted too; its address must equal Base. The groups must cover Size
// exactly. Without a Layout the memory is Size/Page pages of Page bytes.
func (m *Memory) Pages() ([]Memory, error) {
	layout := strings.TrimSpace(m.Layout)
	if layout == "" {
		if m.Page == 0 || m.Size%m.Page != 0 {
			return nil, fmt.Errorf("boards: memory 0x%x+%d: size is not a multiple of the page size %d", m.Base, m.Size, m.Page)
		}
		pages := make([]Memory, 0, m.Size/m.Page)
		for a := uint64(m.Base); a < m.End(); a += uint64(m.Page) {
			pages = append(pages, Memory{Base: uint32(a), Size: m.Page, Page: m.Page})
		}
		return pages, nil
	}
	if strings.HasPrefix(layout, "@") {
		parts := strings.Split(layout, "/")
		if len(parts) != 3 {
			return nil, fmt.Errorf("boards: layout %q: want @NAME/ADDRESS/SECTORS", m.Layout)
		}
		addr, err := strconv.ParseUint(strings.TrimSpace(parts[1]), 0, 32)
		if err != nil {
			return nil, fmt.Errorf("boards: layout %q: address: %v", m.Layout, err)
		}
		if uint32(addr) != m.Base {
			return nil, fmt.Errorf("boards: layout %q: address 0x%x is not the memory's base 0x%x", m.Layout, addr, m.Base)
		}
		layout = parts[2]
	}
	var pages []Memory
	next := uint64(m.Base)
	for _, group := range strings.Split(layout, ",") {
		count, size, err := parseLayoutGroup(group)
		if err != nil {
			return nil, fmt.Errorf("boards: layout %q: %w", m.Layout, err)
		}
		for i := 0; i < count; i++ {
			if next+uint64(size) > m.End() {
				return nil, fmt.Errorf("boards: layout %q covers more than the memory's %d bytes", m.Layout, m.Size)
			}
			pages = append(pages, Memory{Base: uint32(next), Size: size, Page: size})
			next += uint64(size)
		}
	}
	if next != m.End() {
		return nil, fmt.Errorf("boards: layout %q covers %d bytes, the memory has %d", m.Layout, next-uint64(m.Base), m.Size)
	}
	return pages, nil
}

// parseLayoutGroup reads one "NN*SSSU[t]" group.
func parseLayoutGroup(g string) (count int, size uint32, err error) {
	g = strings.TrimLeft(g, " ")
	cs, rest, ok := strings.Cut(g, "*")
	if !ok {
		return 0, 0, fmt.Errorf("group %q: want COUNT*SIZE", g)
	}
	n, err := strconv.Atoi(cs)
	if err != nil || n <= 0 {
		return 0, 0, fmt.Errorf("group %q: bad count %q", g, cs)
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	s, err := strconv.ParseUint(rest[:i], 10, 32)
	if err != nil || s == 0 {
		return 0, 0, fmt.Errorf("group %q: bad size", g)
	}
	rest = rest[i:]
	mul := uint64(1)
	if rest != "" {
		switch rest[0] {
		case 'K':
			mul = 1 << 10
		case 'M':
			mul = 1 << 20
		case ' ', 'B':
		default:
			return 0, 0, fmt.Errorf("group %q: unit %q is not ' ', K or M", g, rest[0])
		}
		rest = rest[1:]
	}
	if len(rest) > 1 || (len(rest) == 1 && (rest[0] < 'a' || rest[0] > 'g')) {
		return 0, 0, fmt.Errorf("group %q: type %q is not a letter a-g", g, rest)
	}
	if s*mul > 1<<31 {
		return 0, 0, fmt.Errorf("group %q: sector too large", g)
	}
	return n, uint32(s * mul), nil
}

// PagesIn returns the indexes (into Pages) of the erase units that share a
// byte with [addr, addr+n).
func PagesIn(pages []Memory, addr uint32, n int) []int {
	var idx []int
	for i, p := range pages {
		if p.Overlaps(addr, n) {
			idx = append(idx, i)
		}
	}
	return idx
}

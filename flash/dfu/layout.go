package dfu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sector is one erase unit of a DfuSe memory and what may be done with it.
type Sector struct {
	Addr     uint32
	Size     uint32
	Readable bool
	Erasable bool
	Writable bool
}

// End returns the first address past the sector.
func (s Sector) End() uint64 { return uint64(s.Addr) + uint64(s.Size) }

// Rights spells the sector's rights as r, e, w or -.
func (s Sector) Rights() string {
	b := []byte("---")
	if s.Readable {
		b[0] = 'r'
	}
	if s.Erasable {
		b[1] = 'e'
	}
	if s.Writable {
		b[2] = 'w'
	}
	return string(b)
}

// Memory is what one alternate setting of a DfuSe device gives access to.
type Memory struct {
	Alt     int
	Name    string
	Sectors []Sector // sorted by address, not overlapping
}

// Find returns the sector holding addr.
func (m *Memory) Find(addr uint32) (Sector, bool) {
	for _, s := range m.Sectors {
		if addr >= s.Addr && uint64(addr) < s.End() {
			return s, true
		}
	}
	return Sector{}, false
}

// String names the memory and its ranges.
func (m *Memory) String() string {
	if len(m.Sectors) == 0 {
		return fmt.Sprintf("%q (alt %d, empty)", m.Name, m.Alt)
	}
	first, last := m.Sectors[0], m.Sectors[len(m.Sectors)-1]
	return fmt.Sprintf("%q 0x%08x-0x%08x (alt %d)", m.Name, first.Addr, last.End(), m.Alt)
}

// ErrLayout marks an alternate setting name that is not a DfuSe layout.
var ErrLayout = errors.New("not a DfuSe memory layout")

// ParseLayout reads a DfuSe alternate setting name:
//
//	@NAME/0xADDR/N*SIZEut[,N*SIZEut...][/0xADDR/...]
//
// where u is the unit (' ' or 'B' bytes, 'K' KiB, 'M' MiB) and t the rights
// letter 'a'..'g' (bit 0 readable, bit 1 erasable, bit 2 writable).
func ParseLayout(alt int, s string) (*Memory, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("dfu: layout %q: %s: %w", s, fmt.Sprintf(format, a...), ErrLayout)
	}
	if !strings.HasPrefix(s, "@") {
		return nil, bad("does not start with '@'")
	}
	parts := strings.Split(s[1:], "/")
	if len(parts) < 3 || len(parts)%2 != 1 {
		return nil, bad("want @name/address/sectors")
	}
	m := &Memory{Alt: alt, Name: strings.TrimSpace(parts[0])}
	for i := 1; i < len(parts); i += 2 {
		a := strings.TrimSpace(parts[i])
		if !strings.HasPrefix(a, "0x") && !strings.HasPrefix(a, "0X") {
			return nil, bad("address %q is not 0x hex", a)
		}
		base, err := strconv.ParseUint(a[2:], 16, 32)
		if err != nil {
			return nil, bad("address %q: %v", a, err)
		}
		addr := uint64(base)
		for _, g := range strings.Split(parts[i+1], ",") {
			n, size, rights, err := parseGroup(g)
			if err != nil {
				return nil, bad("%v", err)
			}
			if len(m.Sectors)+n > 1<<16 {
				return nil, bad("more than 65536 sectors")
			}
			for k := 0; k < n; k++ {
				if addr+uint64(size) > 1<<32 {
					return nil, bad("sectors run past 4 GiB")
				}
				m.Sectors = append(m.Sectors, Sector{Addr: uint32(addr), Size: size,
					Readable: rights&1 != 0, Erasable: rights&2 != 0, Writable: rights&4 != 0})
				addr += uint64(size)
			}
		}
	}
	for i := 1; i < len(m.Sectors); i++ {
		if uint64(m.Sectors[i].Addr) < m.Sectors[i-1].End() {
			return nil, bad("sectors overlap at 0x%x", m.Sectors[i].Addr)
		}
	}
	return m, nil
}

// parseGroup reads "04*016Kg" or "01*016 e".
func parseGroup(g string) (n int, size uint32, rights byte, err error) {
	g = strings.TrimLeft(g, " ")
	cnt, rest, ok := strings.Cut(g, "*")
	if !ok {
		return 0, 0, 0, fmt.Errorf("group %q has no '*'", g)
	}
	c, err := strconv.Atoi(strings.TrimSpace(cnt))
	if err != nil || c <= 0 || c > 1<<16 {
		return 0, 0, 0, fmt.Errorf("group %q: bad sector count", g)
	}
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	if j == 0 {
		return 0, 0, 0, fmt.Errorf("group %q: no sector size", g)
	}
	sz, err := strconv.ParseUint(rest[:j], 10, 32)
	if err != nil || sz == 0 {
		return 0, 0, 0, fmt.Errorf("group %q: bad sector size", g)
	}
	tail := strings.ReplaceAll(rest[j:], " ", "")
	mult := uint64(1)
	if len(tail) == 2 {
		switch tail[0] {
		case 'B':
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		default:
			return 0, 0, 0, fmt.Errorf("group %q: unknown unit %q", g, tail[0])
		}
		tail = tail[1:]
	}
	if len(tail) != 1 || tail[0] < 'a' || tail[0] > 'g' {
		return 0, 0, 0, fmt.Errorf("group %q: want a rights letter a-g at the end", g)
	}
	if sz*mult > 1<<31 {
		return 0, 0, 0, fmt.Errorf("group %q: sector too large", g)
	}
	return c, uint32(sz * mult), tail[0] - 'a' + 1, nil
}

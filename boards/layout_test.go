package boards

import (
	"fmt"
	"testing"
)

func TestPagesLayouts(t *testing.T) {
	for _, tc := range []struct {
		mem   Memory
		want  string // first, last and count
		sizes []uint32
	}{
		{mem: Memory{Base: 0x08000000, Size: 65536, Page: 1024, Layout: "64*001Kg"}, want: "64 0x8000000+1024 0x800fc00+1024"},
		{mem: Memory{Base: 0x08000000, Size: 65536, Page: 1024}, want: "64 0x8000000+1024 0x800fc00+1024"},
		{mem: Memory{Base: 0x08000000, Size: 524288, Page: 16384, Layout: "04*016Kg,01*064Kg,03*128Kg"}, want: "8 0x8000000+16384 0x8060000+131072",
			sizes: []uint32{16384, 16384, 16384, 16384, 65536, 131072, 131072, 131072}},
		{mem: Memory{Base: 0x08000000, Size: 524288, Layout: "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg"}, want: "8 0x8000000+16384 0x8060000+131072"},
		{mem: Memory{Base: 0x0, Size: 1024, Layout: "08*128 g"}, want: "8 0x0+128 0x380+128"},
		{mem: Memory{Base: 0x0, Size: 2 << 20, Layout: "02*001Ma"}, want: "2 0x0+1048576 0x100000+1048576"},
	} {
		pages, err := tc.mem.Pages()
		if err != nil {
			t.Errorf("%+v: %v", tc.mem, err)
			continue
		}
		first, last := pages[0], pages[len(pages)-1]
		got := fmt.Sprintf("%d 0x%x+%d 0x%x+%d", len(pages), first.Base, first.Size, last.Base, last.Size)
		if got != tc.want {
			t.Errorf("%q: got %s, want %s", tc.mem.Layout, got, tc.want)
		}
		for i, s := range tc.sizes {
			if pages[i].Size != s {
				t.Errorf("%q: page %d has %d bytes, want %d", tc.mem.Layout, i, pages[i].Size, s)
			}
		}
		// Pages are contiguous and cover the memory.
		next := uint64(tc.mem.Base)
		for _, p := range pages {
			if uint64(p.Base) != next {
				t.Errorf("%q: gap before 0x%x", tc.mem.Layout, p.Base)
			}
			next = p.End()
		}
		if next != tc.mem.End() {
			t.Errorf("%q: pages end at 0x%x, memory at 0x%x", tc.mem.Layout, next, tc.mem.End())
		}
	}
}

func TestPagesBad(t *testing.T) {
	for _, m := range []Memory{
		{Base: 0x08000000, Size: 65536, Layout: "63*001Kg"},                           // short
		{Base: 0x08000000, Size: 65536, Layout: "65*001Kg"},                           // long
		{Base: 0x08000000, Size: 65536, Layout: "64x001Kg"},                           // no '*'
		{Base: 0x08000000, Size: 65536, Layout: "64*001Qg"},                           // unit
		{Base: 0x08000000, Size: 65536, Layout: "64*001Kz"},                           // type
		{Base: 0x08000000, Size: 65536, Layout: "00*001Kg"},                           // count
		{Base: 0x08000000, Size: 65536, Layout: "@Flash/0x08004000/64*001Kg"},         // address
		{Base: 0x08000000, Size: 65536, Page: 1000},                                   // no layout, uneven pages
		{Base: 0x08000000, Size: 65536},                                               // no page
		{Base: 0x08000000, Size: 65536, Layout: "@Flash/64*001Kg"},                    // missing address
		{Base: 0x08000000, Size: 65536, Layout: "64*Kg"},                              // no size
		{Base: 0x08000000, Size: 65536, Layout: "32*001Kg,,32*001Kg"},                 // empty group
		{Base: 0x08000000, Size: 0xffffffff - 0x08000000, Layout: "01*4096Mg"},        // too large
		{Base: 0x08000000, Size: 65536, Layout: "64*001Kgg"},                          // trailing
		{Base: 0x08000000, Size: 65536, Layout: "-1*001Kg"},                           // negative
		{Base: 0x08000000, Size: 65536, Layout: "64*001Kg,01*001Kg"},                  // overflow
		{Base: 0x08000000, Size: 65536, Layout: "@Flash/zz/64*001Kg"},                 // address syntax
		{Base: 0x08000000, Size: 65536, Layout: "1*0g"},                               // zero size
		{Base: 0x08000000, Size: 65536, Layout: "1*99999999999999999999g"},            // size overflow
		{Base: 0x08000000, Size: 65536, Layout: "1*001K,"},                            // trailing comma
		{Base: 0x08000000, Size: 65536, Layout: "0x40*001Kg"},                         // hex count
		{Base: 0x08000000, Size: 65536, Layout: "@Flash/0x08000000/63*001Kg/1*001Kg"}, // extra part
	} {
		if pages, err := m.Pages(); err == nil {
			t.Errorf("%q (size %d, page %d): got %d pages, want an error", m.Layout, m.Size, m.Page, len(pages))
		}
	}
}

func TestBoardLayouts(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range all {
		if b.Arch != "cortex-m" {
			continue
		}
		pages, err := b.Flash.Pages()
		if err != nil {
			t.Errorf("%s: %v", b.Name, err)
			continue
		}
		t.Logf("%s: %d erase units", b.Name, len(pages))
	}
}

func TestPagesIn(t *testing.T) {
	m := Memory{Base: 0x08000000, Size: 524288, Layout: "04*016Kg,01*064Kg,03*128Kg"}
	pages, err := m.Pages()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr uint32
		n    int
		want string
	}{
		{0x08000000, 1, "[0]"},
		{0x08003fff, 2, "[0 1]"},
		{0x0800c000, 0x4000 + 0x10000 + 1, "[3 4 5]"},
		{0x08070000, 0x10000, "[7]"},
		{0x08000000, 0, "[]"},
	} {
		if got := fmt.Sprint(PagesIn(pages, tc.addr, tc.n)); got != tc.want {
			t.Errorf("PagesIn(0x%x, %d) = %s, want %s", tc.addr, tc.n, got, tc.want)
		}
	}
}

func TestValidateChecksLayout(t *testing.T) {
	data := []byte(`name = "bad-layout"
arch = "cortex-m"
mcu = "stm32f401re"
cpu = "cortex-m4"
cpu_hz = 84000000
flash = { base = 0x08000000, size = 524288, page = 16384, layout = "04*016Kg,01*064Kg,02*128Kg" }
signature = "0x433"
protocol = "stm32-uart"
baud = 115200
`)
	if _, err := Parse("bad-layout.toml", data, nil); err == nil {
		t.Fatal("a layout covering 384 KiB of a 512 KiB flash was accepted")
	} else {
		t.Log(err)
	}
}

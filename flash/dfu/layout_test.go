package dfu

import (
	"errors"
	"testing"
)

func TestParseLayoutF401(t *testing.T) {
	m, err := ParseLayout(0, "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "Internal Flash" || len(m.Sectors) != 8 {
		t.Fatalf("got %q with %d sectors", m.Name, len(m.Sectors))
	}
	want := []struct{ addr, size uint32 }{
		{0x08000000, 16 << 10}, {0x08004000, 16 << 10}, {0x08008000, 16 << 10}, {0x0800c000, 16 << 10},
		{0x08010000, 64 << 10}, {0x08020000, 128 << 10}, {0x08040000, 128 << 10}, {0x08060000, 128 << 10},
	}
	for i, w := range want {
		s := m.Sectors[i]
		if s.Addr != w.addr || s.Size != w.size || s.Rights() != "rew" {
			t.Errorf("sector %d = %#x+%d %s, want %#x+%d rew", i, s.Addr, s.Size, s.Rights(), w.addr, w.size)
		}
	}
	if end := m.Sectors[7].End(); end != 0x08080000 {
		t.Errorf("end %#x, want 0x08080000 (512 KiB)", end)
	}
	if s, ok := m.Find(0x0801ffff); !ok || s.Addr != 0x08010000 {
		t.Errorf("Find(0x0801ffff) = %#x %v", s.Addr, ok)
	}
	if _, ok := m.Find(0x08080000); ok {
		t.Error("Find past the end found a sector")
	}
}

func TestParseLayoutOthers(t *testing.T) {
	for _, tc := range []struct {
		in     string
		n      int
		size   uint32
		rights string
	}{
		{"@Option Bytes  /0x1FFFC000/01*016 e", 1, 16, "r-w"},
		{"@OTP Memory /0x1FFF7800/01*512 e,01*016 e", 2, 512, "r-w"},
		{"@Device Feature/0xFFFF0000/01*004 e", 1, 4, "r-w"},
		{"@Internal Flash  /0x08000000/64*001Kg", 64, 1024, "rew"},
		{"@System /0x1FFF0000/01*030Ka", 1, 30 << 10, "r--"},
		{"@SPI Flash /0x90000000/2*1Mf", 2, 1 << 20, "-ew"},
		{"@Two /0x08000000/1*1Kg/0x08100000/1*2Kg", 2, 1024, "rew"},
		{"@RAM /0x20000000/01*128B d", 1, 128, "--w"},
	} {
		m, err := ParseLayout(1, tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if len(m.Sectors) != tc.n || m.Sectors[0].Size != tc.size || m.Sectors[0].Rights() != tc.rights {
			t.Errorf("%q: %d sectors, first %d %s; want %d, %d %s", tc.in, len(m.Sectors), m.Sectors[0].Size, m.Sectors[0].Rights(), tc.n, tc.size, tc.rights)
		}
	}
}

func TestParseLayoutBad(t *testing.T) {
	for _, in := range []string{
		"", "Internal Flash", "@Flash", "@Flash/0x08000000", "@Flash/08000000/1*1Kg", "@Flash/0x08000000/1*1Kz",
		"@Flash/0x08000000/1x1Kg", "@Flash/0x08000000/0*1Kg", "@Flash/0x08000000/1*Kg", "@Flash/0x08000000/1*1Qg",
		"@Flash/0xFFFFFC00/2*1Kg", "@Two /0x08000000/2*1Kg/0x08000400/1*1Kg",
	} {
		if m, err := ParseLayout(0, in); !errors.Is(err, ErrLayout) {
			t.Errorf("ParseLayout(%q) = %v, %v; want ErrLayout", in, m, err)
		}
	}
}

func FuzzParseLayout(f *testing.F) {
	f.Add("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")
	f.Add("@OTP Memory /0x1FFF7800/01*512 e,01*016 e")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseLayout(0, s)
		if err != nil {
			return
		}
		for i := 1; i < len(m.Sectors); i++ {
			if uint64(m.Sectors[i].Addr) < m.Sectors[i-1].End() {
				t.Fatalf("overlapping sectors from %q", s)
			}
		}
	})
}

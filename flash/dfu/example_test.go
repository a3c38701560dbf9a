package dfu_test

import (
	"fmt"

	"kiln.dev/kiln/flash/dfu"
)

func ExampleParseLayout() {
	m, err := dfu.ParseLayout(0, "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")
	if err != nil {
		panic(err)
	}
	for _, s := range m.Sectors {
		fmt.Printf("0x%08x %3d KiB %s\n", s.Addr, s.Size>>10, s.Rights())
	}
	// Output:
	// 0x08000000  16 KiB rew
	// 0x08004000  16 KiB rew
	// 0x08008000  16 KiB rew
	// 0x0800c000  16 KiB rew
	// 0x08010000  64 KiB rew
	// 0x08020000 128 KiB rew
	// 0x08040000 128 KiB rew
	// 0x08060000 128 KiB rew
}

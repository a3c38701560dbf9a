package firmware_test

import (
	"context"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/swd"
	"kiln.dev/kiln/flash/swd/swdtest"
)

// TestBlinkOverSWD writes the built blink firmware of the two Cortex-M
// boards through both probe models (CMSIS-DAP and ST-LINK) and proves it by
// read-back: the artifact kiln builds is the one the SWD back end writes.
func TestBlinkOverSWD(t *testing.T) {
	for _, tc := range []struct{ recipe, board string }{{"blink-nucleo-f401re", "nucleo-f401re"}, {"blink-bluepill", "bluepill"}} {
		built := sharedBuild(t, tc.recipe)
		img, err := flash.Load(filepath.Join(built.StorePath, "firmware.elf"), flash.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := boards.Get(tc.board)
		if err != nil {
			t.Fatal(err)
		}
		for _, probe := range []string{"cmsis-dap", "st-link"} {
			chip, err := swdtest.NewChip(b)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var tg *swd.Target
			if probe == "st-link" {
				tg, err = swd.OpenSTLink(ctx, swdtest.NewSTLink(chip, "ST"), "ST-LINK/V2-1", "ST", b, swd.Options{})
			} else {
				tg, err = swd.Open(ctx, swdtest.NewProbe(chip, "DAP"), b, swd.Options{})
			}
			if err != nil {
				t.Fatal(err)
			}
			res, err := flash.Program(ctx, tg, img, nil)
			if err != nil || !res.Verified || res.DeviceSHA256 != img.SHA256() {
				t.Fatalf("%s via %s: %+v %v", tc.recipe, probe, res, err)
			}
			for _, s := range img.Segments {
				if string(chip.Page(s.Addr, len(s.Data))) != string(s.Data) {
					t.Fatalf("%s via %s: the model's flash at 0x%x is not the firmware", tc.recipe, probe, s.Addr)
				}
			}
		}
	}
}

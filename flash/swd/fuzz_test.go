package swd_test

import (
	"context"
	"testing"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/swd"
)

// replay answers every command with the next slice of a fuzzed stream: a
// hostile or broken probe.
type replay struct{ data []byte }

func (r *replay) next(n int) []byte {
	if len(r.data) == 0 {
		return nil
	}
	k := int(r.data[0])%n + 1
	r.data = r.data[1:]
	k = min(k, len(r.data))
	b := r.data[:k]
	r.data = r.data[k:]
	return b
}

func (r *replay) Exchange(ctx context.Context, cmd []byte) ([]byte, error) {
	if len(r.data) == 0 {
		return nil, flash.ErrNoAnswer
	}
	b := r.next(600)
	if len(b) > 0 && b[0]&1 == 0 {
		// Mostly echo the command ID, so the fuzzer reaches deeper states.
		b = append([]byte{cmd[0]}, b[1:]...)
	}
	return b, nil
}

func (r *replay) Command(ctx context.Context, cmd, out []byte, inLen int) ([]byte, error) {
	if len(r.data) == 0 {
		return nil, flash.ErrNoAnswer
	}
	return r.next(inLen + 8), nil
}

// FuzzProbeAnswers feeds arbitrary answers to both probe clients through a
// whole open, write and verify: a hostile probe or target gives errors,
// never a panic, a hang or a reported success.
func FuzzProbeAnswers(f *testing.F) {
	f.Add([]byte{0x05, 0x00, 0x02, 0x01, 0x01, 0x77, 0x14, 0xa0, 0x2b})
	f.Add([]byte("\x00\x02\x40\x00\x01\x05\x03\x01\x01\x00\x00\x00\x00"))
	b := board(&testing.T{}, "bluepill")
	img, _ := flash.NewImage("f", flash.Segment{Addr: b.Flash.Base, Data: []byte("kiln fuzz image!")})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		for _, probe := range []string{"dap", "stlink"} {
			r := &replay{data: append([]byte(nil), data...)}
			var tg *swd.Target
			var err error
			if probe == "dap" {
				tg, err = swd.Open(ctx, r, b, swd.Options{})
			} else {
				tg, err = swd.OpenSTLink(ctx, r, "ST-LINK", "F", b, swd.Options{})
			}
			if err != nil {
				continue
			}
			if res, err := flash.Program(ctx, tg, img, nil); err == nil && res.DeviceSHA256 != img.SHA256() {
				t.Fatalf("%s: success reported with device hash %s", probe, res.DeviceSHA256)
			}
		}
	})
}

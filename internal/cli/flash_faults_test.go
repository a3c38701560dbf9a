package cli

import (
	"bytes"
	"context"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
)

// kiln flash through the whole command path against an Optiboot emulator
// with random faults: exit 0 only when the emulated chip holds the image;
// otherwise exit 1 or 3 with one "kiln:" line and hints.
func TestFlashWithFaultsExitCodes(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().UnixNano()
	t.Logf("base seed %d", base)
	orig := openDevice
	t.Cleanup(func() { openDevice = orig })
	codes := map[int]int{}
	for i := 0; i < 30; i++ {
		r := rand.New(rand.NewSource(base + int64(i)))
		img := randomBytes(r.Int63(), 512+r.Intn(2048))
		hex := writeHex(t, dir, "img.hex", 0, img)
		cfg := stk500test.Uno()
		cfg.Faults = stk500test.Faults{Rate: 0.0005 + r.Float64()*0.003, Seed: r.Int63()}
		if i%3 == 0 {
			cfg.Faults.StopAfter = len(img) / 2
		}
		dev := stk500test.New(cfg)
		openDevice = func(ctx context.Context, spec string, b *boards.Board, protocol string, opts device.Options) (device.Session, error) {
			host, board := net.Pipe()
			sctx, cancel := context.WithCancel(context.Background())
			go dev.Serve(sctx, board)
			c := stk500.New(host, stk500.Config{Signature: cfg.Signature, PageSize: 128, Tries: 4, Timeout: 80 * time.Millisecond,
				Reset: func(context.Context) error { dev.Reset(); return nil }, BootTime: time.Millisecond})
			if err := c.Connect(ctx); err != nil {
				cancel()
				host.Close()
				return nil, err
			}
			return device.NewSession(c, c, closer(func() error { cancel(); host.Close(); board.Close(); return nil })), nil
		}
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), []string{"kiln", "flash", "--board", "arduino-uno", "--port", "faulty", hex}, nil, &stdout, &stderr)
		codes[code]++
		holds := bytes.Equal(dev.AppFlash()[:len(img)], img)
		switch code {
		case ExitOK:
			if !holds {
				t.Errorf("seed %d: exit 0 but the device does not hold the image", base+int64(i))
			}
		case ExitFailure, ExitVerify:
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if !strings.HasPrefix(lines[0], "kiln: ") || len(lines) < 2 || !strings.HasPrefix(lines[1], "hint: ") {
				t.Errorf("seed %d: exit %d with stderr:\n%s", base+int64(i), code, stderr.String())
			}
		default:
			t.Errorf("seed %d: exit %d: %s", base+int64(i), code, stderr.String())
		}
	}
	t.Logf("exit codes: %v", codes)
}

type closer func() error

func (f closer) Close() error { return f() }

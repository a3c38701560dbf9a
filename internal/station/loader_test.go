package station_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/op/optest"
	"kiln.dev/kiln/internal/station"
)

// TestSameLoaderAsFlash: the station and kiln flash read artifacts through
// one loader (op.LoadFirmware), so they accept and refuse the same
// formats: .hex, .elf, .bin with an address, a build output directory,
// and not a file that is none of them.
func TestSameLoaderAsFlash(t *testing.T) {
	l := newLine(t, 512)
	elf := optest.AVRELF(5, 0, l.fw)
	os.WriteFile(filepath.Join(l.dir, "blink.elf"), elf, 0o644)
	os.WriteFile(filepath.Join(l.dir, "blink.bin"), l.fw, 0o644)
	os.WriteFile(filepath.Join(l.dir, "blink.txt"), []byte("not firmware\n"), 0o644)
	build := filepath.Join(l.dir, "build")
	os.MkdirAll(build, 0o755)
	os.WriteFile(filepath.Join(build, "firmware.elf"), elf, 0o644)
	sum := sha256.Sum256(elf)
	m, _ := json.Marshal(map[string]any{"board": "arduino-uno", "outputs": map[string]any{"firmware.elf": map[string]any{"sha256": hex.EncodeToString(sum[:])}}})
	os.WriteFile(filepath.Join(build, "manifest.json"), m, 0o644)
	zero := uint32(0)
	for _, c := range []struct {
		artifact, lines string
		address         *uint32
		ok              bool
	}{
		{"blink.hex", "", nil, true},
		{"blink.elf", "", nil, true},
		{"blink.bin", "address = 0", &zero, true},
		{"build", "", nil, true},
		{"blink.bin", "", nil, false},
		{"blink.txt", "", nil, false},
	} {
		cfg := l.config(t, "", c.lines+"\nports = [\"emu:arduino-uno\"]")
		cfg.Targets[0].Artifact = filepath.Join(l.dir, c.artifact)
		_, serr := station.New(cfg, station.Options{LogKey: l.logKey})
		a, lerr := op.LoadFirmware(filepath.Join(l.dir, c.artifact), op.LoadOptions{Address: c.address})
		rep, ferr := op.Flash(context.Background(), op.Request{Artifact: filepath.Join(l.dir, c.artifact), Board: "arduino-uno",
			Port: "emu:arduino-uno", Load: op.LoadOptions{Address: c.address}})
		if (serr == nil) != c.ok || (lerr == nil) != c.ok || (ferr == nil) != c.ok {
			t.Errorf("%s %s: station %v, loader %v, flash %v; want accepted = %v", c.artifact, c.lines, serr, lerr, ferr, c.ok)
			continue
		}
		if c.ok && (a.Image.SHA256() != rep.DeviceSHA256 || !rep.Verified) {
			t.Errorf("%s: flashed %s, loaded %s", c.artifact, rep.DeviceSHA256, a.Image.SHA256())
		}
	}
}

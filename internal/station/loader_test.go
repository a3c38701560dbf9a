package station_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/station"
)

// avrELF is a minimal avr5 ELF32 with one loadable segment at 0.
func avrELF(data []byte) []byte {
	b := make([]byte, 52+32)
	copy(b, "\x7fELF\x01\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)
	le.PutUint16(b[18:], 83) // EM_AVR
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[28:], 52)
	le.PutUint32(b[36:], 0x85) // avr5, link-relax
	le.PutUint16(b[40:], 52)
	le.PutUint16(b[42:], 32)
	le.PutUint16(b[44:], 1)
	p := b[52:]
	le.PutUint32(p[0:], 1)
	le.PutUint32(p[4:], 84)
	le.PutUint32(p[16:], uint32(len(data)))
	le.PutUint32(p[20:], uint32(len(data)))
	le.PutUint32(p[24:], 5)
	return append(b, data...)
}

// TestSameLoaderAsFlash: the station and kiln flash read artifacts through
// one loader (op.LoadFirmware), so they accept and refuse the same
// formats: .hex, .elf, .bin with an address, a build output directory,
// and not a file that is none of them.
func TestSameLoaderAsFlash(t *testing.T) {
	l := newLine(t, 512)
	elf := avrELF(l.fw)
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

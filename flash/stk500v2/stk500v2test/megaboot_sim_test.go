package stk500v2test_test

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/serialport"
	v2 "kiln.dev/kiln/flash/stk500v2"
	"kiln.dev/kiln/flash/stk500v2/stk500v2test"
	"kiln.dev/kiln/internal/simavr"
)

// debianMegaBoot is the Arduino Mega 2560 bootloader as Debian's
// arduino-core-avr ships it (built from the stk500boot.c beside it).
const debianMegaBoot = "/usr/share/arduino/hardware/arduino/avr/bootloaders/stk500v2/stk500boot_v2_mega2560.hex"

// TestClientAgainstRealMegaBootloader flashes an image with an offset start
// and a partial last page (the erase-pointer quirk) through the real Mega
// 2560 bootloader running in simavr and checks the simulated flash; then it
// reads the bootloader's own code at 0x3E000 (load addresses with bit 31)
// and compares it with the simulated flash.
func TestClientAgainstRealMegaBootloader(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real bootloader in simavr at real time")
	}
	if _, err := os.Stat(debianMegaBoot); err != nil {
		t.Fatalf("%v (arduino-core-avr ships it; make deps installs it)", err)
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr lockedBuffer
	sim, err := simavr.Start(ctx, simavr.Options{Bootloader: debianMegaBoot, MCU: "atmega2560", BootAddr: 0x3E000, Stderr: &stderr})
	if err != nil {
		t.Fatalf("simavr: %v\n%s", err, stderr.String())
	}
	defer sim.Close()
	defer func() {
		if t.Failed() {
			t.Logf("harness: %q\n%s", sim.Events(), stderr.String())
		}
	}()
	port, err := serialport.Open(ctx, sim.Port, serialport.Options{Baud: 115200})
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	c := v2.New(port, v2.Config{Signature: [3]byte{0x1e, 0x98, 0x01}, PageSize: 256, FlashSize: 256 * 1024, Timeout: time.Second})
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3000)
	rand.New(rand.NewSource(2560)).Read(data)
	const at = 0x300
	img, _ := flash.NewImage("t", flash.Segment{Addr: at, Data: data})
	res, err := flash.Program(ctx, c, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes written and verified (write %v, verify %v)", c.Identity(), res.Bytes, res.WriteTime, res.VerifyTime)
	boot, err := c.ReadBack(ctx, flash.Region{Addr: 0x3E000, Size: 1024}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	fl, err := sim.Flash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fl[at:at+len(data)], data) {
		t.Fatal("the simulated flash does not hold the image")
	}
	if !bytes.Equal(fl[:at], bytes.Repeat([]byte{0xFF}, at)) {
		t.Fatal("the pages before the image changed")
	}
	if !bytes.Equal(boot, fl[0x3E000:0x3E000+1024]) || bytes.Equal(boot, bytes.Repeat([]byte{0xFF}, 1024)) {
		t.Fatal("reading the bootloader's code above 128 KiB gave other bytes")
	}
}

// TestEmulatorMatchesRealMegaBootloader sends the same frames to the real
// bootloader in simavr and to the emulator and wants the same answers, byte
// for byte (fuse and lock reads excepted: they report the chip's fuses, not
// the bootloader).
func TestEmulatorMatchesRealMegaBootloader(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real bootloader in simavr at real time")
	}
	if _, err := os.Stat(debianMegaBoot); err != nil {
		t.Fatalf("%v (arduino-core-avr ships it; make deps installs it)", err)
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr lockedBuffer
	sim, err := simavr.Start(ctx, simavr.Options{Bootloader: debianMegaBoot, MCU: "atmega2560", BootAddr: 0x3E000, Stderr: &stderr})
	if err != nil {
		t.Fatalf("simavr: %v\n%s", err, stderr.String())
	}
	defer sim.Close()

	page := make([]byte, 256)
	for i := range page {
		page[i] = byte(i*3 + 7)
	}
	prog := func(data []byte) []byte {
		return append([]byte{v2.CmdProgramFlashISP, byte(len(data) >> 8), byte(len(data)), 0xC1, 10, 0x40, 0x4C, 0x20, 0, 0}, data...)
	}
	badSum := v2.Encode(9, []byte{v2.CmdSignOn})
	badSum[len(badSum)-1] ^= 0x40
	script := []struct {
		name string
		wire []byte
	}{
		{"sign on", v2.Encode(1, []byte{v2.CmdSignOn})},
		{"hw version", v2.Encode(2, []byte{v2.CmdGetParameter, v2.ParamHWVersion})},
		{"sw major", v2.Encode(3, []byte{v2.CmdGetParameter, v2.ParamSWMajor})},
		{"sw minor", v2.Encode(4, []byte{v2.CmdGetParameter, v2.ParamSWMinor})},
		{"set parameter", v2.Encode(5, []byte{v2.CmdSetParameter, 0x98, 0})},
		{"enter progmode", v2.Encode(6, []byte{v2.CmdEnterProgmodeISP, 200, 100, 25, 32, 0, 0x53, 3, 0xAC, 0x53, 0, 0})},
		{"signature 0", v2.Encode(7, []byte{v2.CmdSPIMulti, 4, 4, 0, 0x30, 0, 0, 0})},
		{"signature 2", v2.Encode(8, []byte{v2.CmdSPIMulti, 4, 4, 0, 0x30, 0, 2, 0})},
		{"bad checksum: dropped", badSum},
		{"read signature isp", v2.Encode(10, []byte{v2.CmdReadSignatureISP, 0, 0, 0, 1})},
		{"chip erase", v2.Encode(11, []byte{v2.CmdChipEraseISP, 0, 0, 0xAC, 0x80, 0, 0})},
		{"load page 2", v2.Encode(12, []byte{v2.CmdLoadAddress, 0x80, 0, 0, 0x00})},
		{"load page 1", v2.Encode(13, []byte{v2.CmdLoadAddress, 0x80, 0, 0, 0x80})},
		{"program page 1 (erases page 0)", v2.Encode(14, prog(page))},
		{"program page 2 (erases page 1)", v2.Encode(15, prog(page[:128]))},
		{"load 0", v2.Encode(16, []byte{v2.CmdLoadAddress, 0x80, 0, 0, 0})},
		{"read pages 0-1", v2.Encode(17, []byte{v2.CmdReadFlashISP, 1, 0, 0x20})},
		{"read on", v2.Encode(18, []byte{v2.CmdReadFlashISP, 1, 0, 0x20})},
		{"read page 2", v2.Encode(19, []byte{v2.CmdReadFlashISP, 0, 128, 0x20})},
		{"unknown command", v2.Encode(20, []byte{0x77, 1, 2})},
		{"leave progmode", v2.Encode(21, []byte{v2.CmdLeaveProgmodeISP, 1, 1})},
		{"silent after leaving", v2.Encode(22, []byte{v2.CmdSignOn})},
	}
	run := func(l *flash.Link) [][]byte {
		var out [][]byte
		for _, s := range script {
			if _, err := l.Write(s.wire); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			out = append(out, readAnswer(ctx, l))
		}
		return out
	}
	// Opening the pty resets the simulated board. On a starved machine the
	// bootloader may time out into the application before the first frame
	// arrives, as a real board would: sync with a sign-on first, reopening
	// (resetting) until the bootloader answers, as kiln's client does.
	var real [][]byte
	for try := 0; ; try++ {
		port, err := serialport.Open(ctx, sim.Port, serialport.Options{Baud: 115200})
		if err != nil {
			t.Fatal(err)
		}
		l := flash.NewLink(port)
		l.Write(v2.Encode(0, []byte{v2.CmdSignOn}))
		if len(readAnswer(ctx, l)) > 0 {
			real = run(l)
			port.Close()
			break
		}
		port.Close()
		if try == 4 {
			t.Fatalf("the real bootloader never answered a sign-on after 5 resets")
		}
	}

	dev := stk500v2test.New(stk500v2test.Mega2560())
	l := flash.NewLink(line(t, dev))
	l.Write(v2.Encode(0, []byte{v2.CmdSignOn}))
	readAnswer(ctx, l)
	emu := run(l)
	for i, s := range script {
		if !bytes.Equal(real[i], emu[i]) {
			t.Errorf("%s: real bootloader % x, emulator % x", s.name, real[i], emu[i])
		}
	}
	// The answers say something: a sign-on, a 256-byte read, silence where
	// the bootloader is silent.
	if len(real[0]) != 6+11 || len(real[16]) != 6+2+256+1 || len(real[8]) != 0 || len(real[len(real)-1]) != 0 {
		t.Errorf("answer lengths: sign on %d, read %d, bad checksum %d, after leaving %d", len(real[0]), len(real[16]), len(real[8]), len(real[len(real)-1]))
	}
	if t.Failed() {
		t.Logf("harness: %q\n%s", sim.Events(), stderr.String())
	}
}

// lockedBuffer collects the simulator's stderr, written by exec's copier
// while the test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// readAnswer reads one STK500v2 answer frame by its length field (MESSAGE_START,
// sequence, size, TOKEN, body, checksum), or nothing if the bootloader stays
// silent. Frames are read whole, so a slow machine cannot split or merge
// answers; anything else that arrives is read until the line goes quiet.
func readAnswer(ctx context.Context, l *flash.Link) []byte {
	first, err := l.Byte(ctx, 1500*time.Millisecond)
	if err != nil {
		return nil
	}
	got := []byte{first}
	if first == 0x1b {
		head := make([]byte, 4)
		if l.ReadFull(ctx, head, 2*time.Second) != nil {
			return append(got, head...)
		}
		got = append(got, head...)
		body := make([]byte, int(head[1])<<8|int(head[2])+1)
		err := l.ReadFull(ctx, body, 5*time.Second)
		got = append(got, body...)
		if err == nil {
			return got
		}
	}
	for {
		b, err := l.Byte(ctx, 300*time.Millisecond)
		if err != nil {
			return got
		}
		got = append(got, b)
	}
}

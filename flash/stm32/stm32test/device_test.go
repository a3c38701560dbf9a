package stm32test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
)

// host drives a device byte by byte, the way a test of the ROM would.
type host struct {
	t    *testing.T
	conn net.Conn
}

func start(t *testing.T, name string, setup func(*Device)) (*Device, *host) {
	t.Helper()
	b, err := boards.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(b)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(d)
	}
	h, dev := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.Serve(ctx, dev) }()
	t.Cleanup(func() { cancel(); h.Close(); dev.Close(); wg.Wait() })
	return d, &host{t: t, conn: h}
}

func (h *host) send(p ...byte) {
	h.t.Helper()
	if _, err := h.conn.Write(p); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) expect(want ...byte) {
	h.t.Helper()
	got := make([]byte, len(want))
	h.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(h.conn, got); err != nil {
		h.t.Fatalf("want % x: %v (got % x)", want, err, got)
	}
	if !bytes.Equal(got, want) {
		h.t.Fatalf("got % x, want % x", got, want)
	}
}

func (h *host) silent() {
	h.t.Helper()
	h.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [1]byte
	if n, _ := h.conn.Read(b[:]); n > 0 {
		h.t.Fatalf("unexpected byte 0x%02x", b[0])
	}
}

func addr(a uint32) []byte {
	b := []byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a), 0}
	b[4] = b[0] ^ b[1] ^ b[2] ^ b[3]
	return b
}

func (h *host) cmd(c byte) { h.send(c, c^0xFF) }

func (h *host) write(a uint32, data []byte) {
	h.t.Helper()
	h.cmd(CmdWriteMemory)
	h.expect(ACK)
	h.send(addr(a)...)
	h.expect(ACK)
	frame := append([]byte{byte(len(data) - 1)}, data...)
	h.send(append(frame, xor(frame))...)
}

func TestProtocolF1(t *testing.T) {
	d, h := start(t, "bluepill", nil)
	// Bytes before autobaud are ignored; 0x7F is answered with ACK.
	h.send(0x00)
	h.silent()
	h.send(Init)
	h.expect(ACK)
	// Get: the F1 ROM's list, with legacy erase.
	h.cmd(CmdGet)
	h.expect(ACK, 11, 0x22, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73, 0x82, 0x92, ACK)
	h.cmd(CmdGetVersion)
	h.expect(ACK, 0x22, 0, 0, ACK)
	h.cmd(CmdGetID)
	h.expect(ACK, 1, 0x04, 0x10, ACK)
	// A bad complement, an unlisted command and a second 0x7F are refused.
	h.send(CmdGet, 0x00)
	h.expect(NACK)
	h.cmd(CmdExtErase)
	h.expect(NACK)
	h.send(Init, Init)
	h.expect(NACK)
	// Read the unique ID where the F1 keeps it.
	h.cmd(CmdReadMemory)
	h.expect(ACK)
	h.send(addr(0x1FFFF7E8)...)
	h.expect(ACK)
	h.send(11, 11^0xFF)
	h.expect(append([]byte{ACK}, d.UID[:]...)...)
	// A bad address checksum is refused.
	h.cmd(CmdReadMemory)
	h.expect(ACK)
	bad := addr(0x08000000)
	bad[4] ^= 1
	h.send(bad...)
	h.expect(NACK)

	// Program, then program again without erase: PGERR, NACK, and the
	// cells keep the first data (F1 flash does not AND).
	h.write(0x08000400, []byte{0x12, 0x34, 0x56, 0x78})
	h.expect(ACK)
	h.write(0x08000400, []byte{0x00, 0x30, 0x56, 0x78})
	h.expect(NACK)
	if got, _ := d.Memory(0x08000400, 4); !bytes.Equal(got, []byte{0x12, 0x34, 0x56, 0x78}) {
		t.Errorf("after PGERR: % x", got)
	}
	// Writing 0x0000 over a programmed half-word is allowed.
	h.write(0x08000400, []byte{0x00, 0x00, 0xFF, 0xFF})
	h.expect(NACK) // the second half-word is not erased and not 0x0000
	if got, _ := d.Memory(0x08000400, 4); !bytes.Equal(got, []byte{0x00, 0x00, 0x56, 0x78}) {
		t.Errorf("after writing 0x0000: % x", got)
	}
	// Lengths that are not whole words, and unaligned addresses, are refused.
	h.write(0x08000800, []byte{1, 2, 3})
	h.expect(NACK)
	h.cmd(CmdWriteMemory)
	h.expect(ACK)
	h.send(addr(0x08000802)...)
	h.expect(NACK)
	// Erase page 1 (legacy: one byte a page): only it becomes 0xFF.
	d.SetMemory(0x08000800, []byte{0xAA})
	h.cmd(CmdErase)
	h.expect(ACK)
	h.send(0, 1, 0^1)
	h.expect(ACK)
	if got, _ := d.Memory(0x08000400, 1024); !bytes.Equal(got, bytes.Repeat([]byte{0xFF}, 1024)) {
		t.Error("page 1 not erased")
	}
	if got, _ := d.Memory(0x08000800, 1); got[0] != 0xAA {
		t.Error("page 2 erased too")
	}
	// A page that does not exist is refused, and nothing is erased.
	h.cmd(CmdErase)
	h.expect(ACK)
	h.send(1, 2, 64, 1^2^64)
	h.expect(NACK)
	if got, _ := d.Memory(0x08000800, 1); got[0] != 0xAA {
		t.Error("a refused erase erased page 2")
	}
	st := d.Stats()
	if st.Erases[1] != 1 || st.Erases[2] != 0 {
		t.Errorf("erase counts %v", st.Erases[:4])
	}
	// Go starts the application: nothing answers until reset.
	h.cmd(CmdGo)
	h.expect(ACK)
	h.send(addr(0x08000000)...)
	h.expect(ACK)
	h.cmd(CmdGet)
	h.silent()
	d.Reset()
	h.send(Init)
	h.expect(ACK)
	if d.Stats().Go != 0x08000000 {
		t.Error("Go not recorded")
	}
}

func TestProtocolF4(t *testing.T) {
	d, h := start(t, "nucleo-f401re", func(d *Device) { d.Checksum = true })
	h.send(Init)
	h.expect(ACK)
	h.cmd(CmdGet)
	h.expect(ACK, 12, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92, 0xA1, ACK)
	h.cmd(CmdGetID)
	h.expect(ACK, 1, 0x04, 0x33, ACK)
	// F4 flash ANDs: writing over programmed cells clears bits only.
	h.write(0x08004000, []byte{0xF0, 0xFF, 0x0F, 0xFF})
	h.expect(ACK)
	h.write(0x08004000, []byte{0x3C, 0xFF, 0xFF, 0x00})
	h.expect(ACK)
	if got, _ := d.Memory(0x08004000, 4); !bytes.Equal(got, []byte{0x30, 0xFF, 0x0F, 0x00}) {
		t.Errorf("after two writes: % x", got)
	}
	// Extended erase of sector 1 (16 KiB) and 4 (64 KiB).
	d.SetMemory(0x08010000, []byte{1})
	d.SetMemory(0x08020000, []byte{2})
	h.cmd(CmdExtErase)
	h.expect(ACK)
	list := []byte{0, 1, 0, 1, 0, 4}
	h.send(append(list, xor(list))...)
	h.expect(ACK)
	for a, want := range map[uint32]byte{0x08004000: 0xFF, 0x08010000: 0xFF, 0x08020000: 2} {
		if got, _ := d.Memory(a, 1); got[0] != want {
			t.Errorf("0x%x: 0x%02x, want 0x%02x", a, got[0], want)
		}
	}
	// Bank erase is refused on a one-bank part; sector 8 does not exist.
	h.cmd(CmdExtErase)
	h.expect(ACK)
	h.send(0xFF, 0xFE, 0x01)
	h.expect(NACK)
	h.cmd(CmdExtErase)
	h.expect(ACK)
	h.send(0, 0, 0, 8, 8)
	h.expect(NACK)
	// Get Checksum of one erased word: the CRC unit's value for 0xFFFFFFFF.
	h.cmd(CmdChecksum)
	h.expect(ACK)
	h.send(addr(0x08004000)...)
	h.expect(ACK)
	h.send(addr(4)...)
	crc := crc32STM([]byte{0xFF, 0xFF, 0xFF, 0xFF})
	out := []byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)}
	h.expect(append([]byte{ACK, ACK}, append(out, xor(out))...)...)
	// The F4 keeps its unique ID at 0x1FFF7A10 and its flash size at 0x1FFF7A22.
	h.cmd(CmdReadMemory)
	h.expect(ACK)
	h.send(addr(0x1FFF7A22)...)
	h.expect(ACK)
	h.send(1, 1^0xFF)
	h.expect(ACK, 0x00, 0x02) // 512 KiB
}

func TestCRCKnownValue(t *testing.T) {
	// The STM32 CRC unit's example: 0x12345678 after reset gives 0xDF8A8A2B.
	if got := crc32STM([]byte{0x78, 0x56, 0x34, 0x12}); got != 0xDF8A8A2B {
		t.Errorf("crc 0x%08x", got)
	}
}

func TestSaveLoad(t *testing.T) {
	b, _ := boards.Get("bluepill")
	d, _ := New(b)
	d.SetMemory(0x08001000, []byte("kiln"))
	d.UID[0] = 0x42
	var buf bytes.Buffer
	if err := d.Save(&buf); err != nil {
		t.Fatal(err)
	}
	d2, _ := New(b)
	if err := d2.Load(&buf); err != nil {
		t.Fatal(err)
	}
	if got, _ := d2.Memory(0x08001000, 4); string(got) != "kiln" || d2.UID != d.UID {
		t.Errorf("loaded %q, uid %x", got, d2.UID)
	}
	f4, _ := boards.Get("nucleo-f401re")
	d3, _ := New(f4)
	buf.Reset()
	d.Save(&buf)
	if err := d3.Load(&buf); err == nil {
		t.Error("a bluepill state loaded into a nucleo-f401re")
	}
	// AppFlash/LoadAppFlash are what kiln emulate --state keeps.
	if err := d3.LoadAppFlash(d.AppFlash()); err != nil {
		t.Fatal(err)
	}
	if got, _ := d3.Memory(0x08001000, 4); string(got) != "kiln" {
		t.Errorf("app flash: %q", got)
	}
	if err := d.LoadAppFlash(make([]byte, 1<<20)); err == nil {
		t.Error("1 MiB loaded into 64 KiB")
	}
}

func TestSessionEndHook(t *testing.T) {
	d, h := start(t, "bluepill", nil)
	saved := make(chan struct{}, 4)
	d.OnSessionEnd(func() { saved <- struct{}{} })
	h.send(Init)
	h.expect(ACK)
	h.write(0x08000000, []byte{1, 2, 3, 4})
	h.expect(ACK)
	h.conn.Close() // the host closes the port: the session ends
	select {
	case <-saved:
	case <-time.After(2 * time.Second):
		t.Fatal("no session-end hook after a session that wrote flash")
	}
}

func TestPacedTiming(t *testing.T) {
	// 1000 bytes at 9600 baud take about a second on the wire.
	d, h := start(t, "bluepill", func(d *Device) { d.Timing = Timing{Baud: 9600} })
	_ = d
	h.send(Init)
	h.expect(ACK)
	begin := time.Now()
	h.cmd(CmdReadMemory)
	h.expect(ACK)
	h.send(addr(0x08000000)...)
	h.expect(ACK)
	h.send(255, 0)
	h.expect(append([]byte{ACK}, bytes.Repeat([]byte{0xFF}, 256)...)...)
	// 2 + 1 + 5 + 1 + 2 + 1 + 256 = 268 bytes: 279 ms at 9600 baud.
	if el := time.Since(begin); el < 250*time.Millisecond {
		t.Errorf("268 bytes at 9600 baud took %v", el)
	}
}

package stk500v2test_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"kiln.dev/kiln/flash/internal/emutest"
	v2 "kiln.dev/kiln/flash/stk500v2"
	"kiln.dev/kiln/flash/stk500v2/stk500v2test"
)

func line(t *testing.T, dev *stk500v2test.Device) net.Conn {
	t.Helper()
	return emutest.Serve(t, dev.Serve, false)
}

// ask sends a frame and returns the answer frame (ok false on timeout).
func ask(t *testing.T, c net.Conn, wire []byte) (v2.Frame, bool) {
	t.Helper()
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	tmp := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if f, _, perr := v2.Parse(buf); perr == nil {
			return f, true
		}
		if err != nil {
			return v2.Frame{}, false
		}
	}
}

func TestMegaBootloaderAnswers(t *testing.T) {
	c := line(t, stk500v2test.New(stk500v2test.Mega2560()))
	f, ok := ask(t, c, v2.Encode(7, []byte{v2.CmdSignOn}))
	if !ok || f.Seq != 7 || !bytes.Equal(f.Body, append([]byte{1, 0, 8}, "AVRISP_2"...)) {
		t.Fatalf("sign on: %+v %v", f, ok)
	}
	f, _ = ask(t, c, v2.Encode(8, []byte{v2.CmdSPIMulti, 4, 4, 0, 0x30, 0, 1, 0}))
	if !bytes.Equal(f.Body, []byte{v2.CmdSPIMulti, 0, 0, 0x30, 0, 0x98, 0}) {
		t.Fatalf("signature byte 1: % x", f.Body)
	}
	f, _ = ask(t, c, v2.Encode(9, []byte{v2.CmdChipEraseISP, 0, 0, 0xAC, 0x80, 0, 0}))
	if !bytes.Equal(f.Body, []byte{v2.CmdChipEraseISP, v2.StatusCmdFailed}) {
		t.Fatalf("chip erase: % x", f.Body)
	}
	// A frame with a bad checksum is dropped without an answer.
	bad := v2.Encode(10, []byte{v2.CmdSignOn})
	bad[len(bad)-1] ^= 1
	if f, ok := ask(t, c, bad); ok {
		t.Fatalf("answered a bad frame: %+v", f)
	}
	if _, ok := ask(t, c, v2.Encode(11, []byte{v2.CmdSignOn})); !ok {
		t.Fatal("no answer after a dropped frame")
	}
}

// The erase pointer, not the load address, decides which page is erased:
// writing page 1 first erases page 0 and programs page 1 over its old
// content (AND), which is why the client writes from page 0 in order.
func TestErasePointerQuirk(t *testing.T) {
	dev := stk500v2test.New(stk500v2test.Mega2560())
	old := make([]byte, 512)
	for i := range old {
		old[i] = 0x0F
	}
	dev.LoadAppFlash(old)
	c := line(t, dev)
	ask(t, c, v2.Encode(1, []byte{v2.CmdLoadAddress, 0x80, 0, 0, 128})) // word 128 = byte 256
	page := bytes.Repeat([]byte{0xF1}, 256)
	f, _ := ask(t, c, v2.Encode(2, append([]byte{v2.CmdProgramFlashISP, 1, 0, 0xC1, 10, 0x40, 0x4C, 0x20, 0, 0}, page...)))
	if !bytes.Equal(f.Body, []byte{v2.CmdProgramFlashISP, 0}) {
		t.Fatalf("program: % x", f.Body)
	}
	fl := dev.AppFlash()
	if !bytes.Equal(fl[:256], bytes.Repeat([]byte{0xFF}, 256)) {
		t.Errorf("page 0 was not erased")
	}
	if !bytes.Equal(fl[256:512], bytes.Repeat([]byte{0x01}, 256)) {
		t.Errorf("page 1 holds % x, want old AND new (01)", fl[256:260])
	}
}

// After a second of silence the bootloader starts the application only if
// one is there (flash word 0 programmed).
func TestTimeoutNeedsAnApplication(t *testing.T) {
	cfg := stk500v2test.Mega2560()
	cfg.Watchdog = 80 * time.Millisecond
	erased := stk500v2test.New(cfg)
	c := line(t, erased)
	ask(t, c, v2.Encode(1, []byte{v2.CmdSignOn}))
	time.Sleep(200 * time.Millisecond)
	if _, ok := ask(t, c, v2.Encode(2, []byte{v2.CmdSignOn})); !ok {
		t.Fatal("left the bootloader with no application")
	}
	programmed := stk500v2test.New(cfg)
	programmed.LoadAppFlash([]byte{0x0C, 0x94})
	c = line(t, programmed)
	ask(t, c, v2.Encode(1, []byte{v2.CmdSignOn}))
	time.Sleep(200 * time.Millisecond)
	if _, ok := ask(t, c, v2.Encode(2, []byte{v2.CmdSignOn})); ok {
		t.Fatal("still in the bootloader after the timeout")
	}
}

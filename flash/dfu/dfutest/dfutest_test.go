package dfutest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/dfu"
)

// host drives the model with raw requests.
type host struct {
	t *testing.T
	d *Device
}

func (h host) out(req uint8, val uint16, data []byte) error {
	_, err := h.d.Control(context.Background(), dfu.TypeOut, req, val, 0, data)
	return err
}

func (h host) status() (dfu.Status, time.Duration, dfu.State) {
	h.t.Helper()
	var b [6]byte
	if _, err := h.d.Control(context.Background(), dfu.TypeIn, dfu.ReqGetStatus, 0, 0, b[:]); err != nil {
		h.t.Fatal(err)
	}
	ms := uint32(b[1]) | uint32(b[2])<<8 | uint32(b[3])<<16
	return dfu.Status(b[0]), time.Duration(ms) * time.Millisecond, dfu.State(b[4])
}

func (h host) want(st dfu.Status, state dfu.State) {
	h.t.Helper()
	if s, _, ss := h.status(); s != st || ss != state {
		h.t.Fatalf("status %v in %v, want %v in %v", s, ss, st, state)
	}
}

// cmd sends a DfuSe command and runs it to completion; it returns the final
// status and state.
func (h host) cmd(c byte, addr uint32) (dfu.Status, dfu.State) {
	h.t.Helper()
	if err := h.out(dfu.ReqDnload, 0, binary.LittleEndian.AppendUint32([]byte{c}, addr)); err != nil {
		h.t.Fatal(err)
	}
	if _, _, s := h.status(); s != dfu.DfuDnBusy {
		h.t.Fatalf("after DNLOAD: %v, want dfuDNBUSY", s)
	}
	st, _, s := h.status()
	return st, s
}

func newF401(t *testing.T) (host, *Device) {
	b, err := boards.Get("nucleo-f401re")
	if err != nil {
		t.Fatal(err)
	}
	d, err := ForBoard(b)
	if err != nil {
		t.Fatal(err)
	}
	return host{t, d}, d
}

func TestStalls(t *testing.T) {
	h, d := newF401(t)
	h.want(dfu.StatusOK, dfu.DfuIdle)
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"CLRSTATUS in dfuIDLE", func() error { return h.out(dfu.ReqClrStatus, 0, nil) }},
		{"zero-length DNLOAD in dfuIDLE", func() error { return h.out(dfu.ReqDnload, 2, nil) }},
		{"DNLOAD block 1", func() error { return h.out(dfu.ReqDnload, 1, []byte{1}) }},
		{"DNLOAD past wTransferSize", func() error { return h.out(dfu.ReqDnload, 2, make([]byte, 2049)) }},
		{"unknown command", func() error { return h.out(dfu.ReqDnload, 0, []byte{0x55}) }},
		{"DETACH", func() error { return h.out(dfu.ReqDetach, 0, nil) }},
		{"UPLOAD in dfuDNLOAD-IDLE", func() error {
			if st, s := h.cmd(dfu.CmdSetAddress, 0x08000000); st != dfu.StatusOK || s != dfu.DfuDnloadIdle {
				t.Fatalf("set address: %v %v", st, s)
			}
			_, err := d.Control(context.Background(), dfu.TypeIn, dfu.ReqUpload, 2, 0, make([]byte, 16))
			return err
		}},
	} {
		if err := tc.do(); !errors.Is(err, dfu.ErrStall) {
			t.Fatalf("%s: %v, want a stall", tc.name, err)
		}
		h.want(dfu.StatusStalledPkt, dfu.DfuError)
		if err := h.out(dfu.ReqAbort, 0, nil); !errors.Is(err, dfu.ErrStall) {
			t.Fatalf("ABORT in dfuERROR: %v, want a stall", err)
		}
		if err := h.out(dfu.ReqClrStatus, 0, nil); err != nil {
			t.Fatal(err)
		}
		h.want(dfu.StatusOK, dfu.DfuIdle)
	}
}

func TestEraseBeforeWrite(t *testing.T) {
	h, d := newF401(t)
	old, _ := d.Memory(0x08004000, 2048)
	if bytes.Equal(old, bytes.Repeat([]byte{0xff}, 2048)) {
		t.Fatal("the board model should start with a previous program")
	}
	data := bytes.Repeat([]byte{0x12, 0x34, 0x56, 0x78}, 512)
	write := func() (dfu.Status, dfu.State) {
		if st, _ := h.cmd(dfu.CmdSetAddress, 0x08004000); st != dfu.StatusOK {
			t.Fatal(st)
		}
		if err := h.out(dfu.ReqDnload, 2, data); err != nil {
			t.Fatal(err)
		}
		h.status()
		st, _, s := h.status()
		return st, s
	}
	if st, s := write(); st != dfu.StatusCheckErased || s != dfu.DfuError {
		t.Fatalf("write over a previous program: %v in %v, want errCHECK_ERASED", st, s)
	}
	if now, _ := d.Memory(0x08004000, 2048); !bytes.Equal(now, old) {
		t.Fatal("a refused write changed flash")
	}
	h.out(dfu.ReqClrStatus, 0, nil)
	if st, s := h.cmd(dfu.CmdErase, 0x08004000); st != dfu.StatusOK || s != dfu.DfuDnloadIdle {
		t.Fatalf("erase: %v %v", st, s)
	}
	if st, s := write(); st != dfu.StatusOK || s != dfu.DfuDnloadIdle {
		t.Fatalf("write after erase: %v %v", st, s)
	}
	if now, _ := d.Memory(0x08004000, 2048); !bytes.Equal(now, data) {
		t.Fatal("flash does not hold the block")
	}
	// The erase hit exactly that sector.
	if st := d.Stats(); len(st.Erased) != 1 || st.Erased[0] != 0x08004000 {
		t.Fatalf("erased %x", st.Erased)
	}
	if b, _ := d.Memory(0x08008000, 4); bytes.Equal(b, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Fatal("the next sector was erased too")
	}
}

func TestAddressErrors(t *testing.T) {
	h, _ := newF401(t)
	if st, s := h.cmd(dfu.CmdSetAddress, 0x08080000); st != dfu.StatusAddress || s != dfu.DfuError {
		t.Fatalf("set address past flash: %v %v, want errADDRESS", st, s)
	}
	h.out(dfu.ReqClrStatus, 0, nil)
	if st, s := h.cmd(dfu.CmdErase, 0x20000000); st != dfu.StatusTarget || s != dfu.DfuError {
		t.Fatalf("erase of RAM: %v %v, want errTARGET", st, s)
	}
}

// TestPollTimeout: the model reports its busy time in bwPollTimeout and
// NAKs requests until it is done.
func TestPollTimeout(t *testing.T) {
	h, d := newF401(t)
	d.SetTiming(Timing{Erase: map[uint32]time.Duration{16 << 10: 30 * time.Millisecond}})
	if err := h.out(dfu.ReqDnload, 0, []byte{dfu.CmdErase, 0, 0, 0, 8}); err != nil {
		t.Fatal(err)
	}
	st, poll, s := h.status()
	if st != dfu.StatusOK || s != dfu.DfuDnBusy || poll != 30*time.Millisecond {
		t.Fatalf("%v %v %v, want dfuDNBUSY with bwPollTimeout 30ms", st, s, poll)
	}
	start := time.Now()
	h.want(dfu.StatusOK, dfu.DfuDnloadIdle) // too early: held until the erase is done
	if el := time.Since(start); el < 25*time.Millisecond {
		t.Errorf("an early GETSTATUS returned after %v, before the erase finished", el)
	}
	if d.Stats().EarlyPolls != 1 {
		t.Errorf("early polls %d, want 1", d.Stats().EarlyPolls)
	}
	if F401.EraseTime(128<<10) != time.Second || F401.EraseTime(32<<10) != 500*time.Millisecond || F401.ProgramTime(2048) != 8192*time.Microsecond {
		t.Error("F401 timing")
	}
}

func TestUploadAndLeave(t *testing.T) {
	h, d := newF401(t)
	cmds := make([]byte, 16)
	n, err := d.Control(context.Background(), dfu.TypeIn, dfu.ReqUpload, 0, 0, cmds)
	if err != nil || !bytes.Equal(cmds[:n], []byte{0x00, 0x21, 0x41, 0x92}) {
		t.Fatalf("GET_COMMANDS: % x %v", cmds[:n], err)
	}
	h.want(dfu.StatusOK, dfu.DfuUploadIdle)
	h.out(dfu.ReqAbort, 0, nil)
	h.cmd(dfu.CmdSetAddress, 0x08000000)
	if err := h.out(dfu.ReqDnload, 2, nil); err != nil {
		t.Fatal(err)
	}
	h.want(dfu.StatusOK, dfu.DfuManifest)
	if left, at := d.Left(); !left || at != 0x08000000 {
		t.Fatalf("left %v at %x", left, at)
	}
	if err := h.out(dfu.ReqAbort, 0, nil); !errors.Is(err, flash.ErrNoDevice) {
		t.Fatalf("request after leaving: %v", err)
	}
	d.Reset()
	h.want(dfu.StatusOK, dfu.DfuIdle)
}

func TestSetAlt(t *testing.T) {
	h, d := newF401(t)
	if err := d.SetAlt(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	// Option bytes are readable and writable but not erasable.
	if st, _ := h.cmd(dfu.CmdErase, 0x1fffc000); st != dfu.StatusTarget {
		t.Fatalf("erase of option bytes: %v", st)
	}
	if err := d.SetAlt(context.Background(), 9); !errors.Is(err, dfu.ErrStall) {
		t.Fatalf("alt 9: %v", err)
	}
}

package stk500v2

import (
	"bytes"
	"errors"
	"testing"
)

func TestEncodeKnownFrame(t *testing.T) {
	// CMD_SIGN_ON with sequence number 1, as avrdude sends it.
	got := Encode(1, []byte{CmdSignOn})
	want := []byte{0x1B, 0x01, 0x00, 0x01, 0x0E, 0x01, 0x14}
	if !bytes.Equal(got, want) {
		t.Fatalf("Encode = % x, want % x", got, want)
	}
}

func TestParseRoundTripAndGarbage(t *testing.T) {
	body := []byte{CmdReadFlashISP, 0x01, 0x00, 0x20}
	wire := append([]byte{0x00, 0xFF, 0x42}, Encode(7, body)...)
	wire = append(wire, 0x99)
	f, n, err := Parse(wire)
	if err != nil {
		t.Fatal(err)
	}
	if f.Seq != 7 || !bytes.Equal(f.Body, body) || n != len(wire)-1 {
		t.Fatalf("frame %+v used %d", f, n)
	}
}

func TestParseRejectsBadChecksumAndShort(t *testing.T) {
	wire := Encode(3, []byte{CmdSignOn, 0x00})
	if _, _, err := Parse(wire[:len(wire)-1]); !errors.Is(err, ErrShort) {
		t.Fatalf("short frame: err = %v", err)
	}
	for i := 1; i < len(wire); i++ {
		bad := append([]byte(nil), wire...)
		bad[i] ^= 0x10
		if f, _, err := Parse(bad); err == nil && i != 2 && i != 3 {
			t.Errorf("byte %d flipped: parsed %+v", i, f)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Encode(1, []byte{CmdSignOn}))
	f.Add(Encode(9, append([]byte{CmdProgramFlashISP, 0, 4, 0xC1, 10, 0x40, 0x4C, 0x20, 0, 0}, 1, 2, 3, 4)))
	f.Add([]byte{0x1B, 0x01, 0xFF, 0xFF, 0x0E})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, n, err := Parse(data)
		if n < 0 || n > len(data) {
			t.Fatalf("used %d of %d bytes", n, len(data))
		}
		if err != nil {
			return
		}
		if len(fr.Body) > MaxBody {
			t.Fatalf("body of %d bytes", len(fr.Body))
		}
		// A frame that parses encodes back to the bytes it came from.
		enc := Encode(fr.Seq, fr.Body)
		if !bytes.Equal(enc, data[n-len(enc):n]) {
			t.Fatalf("re-encoded % x, wire % x", enc, data[n-len(enc):n])
		}
	})
}

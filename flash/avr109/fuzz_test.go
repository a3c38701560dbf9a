package avr109_test

import (
	"context"
	"io"
	"testing"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/avr109"
)

// line answers whatever is written to it with the next bytes of a fuzzed
// stream, then reports the line closed: a hostile or broken bootloader.
type line struct {
	answers []byte
	ready   chan struct{}
}

func (l *line) Write(p []byte) (int, error) {
	select {
	case l.ready <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *line) Read(p []byte) (int, error) {
	<-l.ready
	if len(l.answers) == 0 {
		return 0, io.EOF
	}
	n := copy(p, l.answers[:min(len(l.answers), 1+int(l.answers[0])%64)])
	l.answers = l.answers[n:]
	return n, nil
}

// FuzzBootloaderAnswers feeds arbitrary answers to the AVR109 client through
// connect, write and verify: errors, never a panic or a reported success.
func FuzzBootloaderAnswers(f *testing.F) {
	f.Add([]byte("CATERIN10Y\x00\x80\x87\x95\x1e\r"))
	f.Add([]byte("CATERIN10Y\x00\x02\x87\x95\x1e\r\r\r\r\r"))
	img, _ := flash.NewImage("f", flash.Segment{Addr: 0, Data: []byte("kiln fuzz image")})
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &line{answers: data, ready: make(chan struct{}, 1)}
		c := avr109.New(l, avr109.Config{Signature: [3]byte{0x1e, 0x95, 0x87}, Timeout: 5 * time.Millisecond, Tries: 2})
		ctx := context.Background()
		if err := c.Connect(ctx); err != nil {
			return
		}
		if res, err := flash.Program(ctx, c, img, nil); err == nil && res.DeviceSHA256 != img.SHA256() {
			t.Fatalf("success reported with device hash %s", res.DeviceSHA256)
		}
	})
}

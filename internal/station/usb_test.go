package station_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.bug.st/serial/enumerator"

	"kiln.dev/kiln/internal/station"
)

// TestUSBMatching: with usb = true, a serial port whose USB VID:PID is one
// of the board file's gets a job; another USB device and a non-USB port do
// not. The enumerator is replaced by a list the test controls; the ports
// are real ptys.
func TestUSBMatching(t *testing.T) {
	l := newLine(t, 512)
	cfg := l.config(t, "", "usb = true")
	uno := plugBoard(t, fastUno(), "")
	other := plugBoard(t, fastUno(), "")
	plain := plugBoard(t, fastUno(), "")
	var mu sync.Mutex
	list := []*enumerator.PortDetails{
		{Name: other.name, IsUSB: true, VID: "0483", PID: "df11", SerialNumber: "STM"},
		{Name: plain.name},
	}
	rec := newRecorder()
	s, err := station.New(cfg, station.Options{LogKey: l.logKey, OnEvent: rec.add, ListPorts: func() ([]*enumerator.PortDetails, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]*enumerator.PortDetails(nil), list...), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	mu.Lock() // the Uno is plugged in while the station runs

	list = append(list, &enumerator.PortDetails{Name: uno.name, IsUSB: true, VID: "2341", PID: "0043", SerialNumber: "8573531"})
	mu.Unlock()
	if e := rec.wait(ctx, t, uno.name, ended); e.State != station.StateVerified {
		t.Fatalf("USB Uno: %+v", e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recs := l.records(t)
	if len(recs) != 1 || recs[0].Port != uno.name {
		t.Fatalf("records %+v", recs)
	}
	if other.dev.PagesWritten() != 0 || plain.dev.PagesWritten() != 0 {
		t.Error("a port that is not the board's was written")
	}
}

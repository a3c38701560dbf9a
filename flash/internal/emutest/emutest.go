// Package emutest holds test helpers shared by the bootloader emulators'
// tests and the tests of their clients.
package emutest

import (
	"context"
	"io"
	"net"
	"testing"
)

// Serve runs serve on one end of a pipe until the test ends, and returns the
// other end (the host's). With check, an error from serve fails the test.
func Serve(t testing.TB, serve func(context.Context, io.ReadWriter) error, check bool) net.Conn {
	t.Helper()
	host, board := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, board) }()
	t.Cleanup(func() {
		cancel()
		host.Close()
		board.Close()
		if err := <-done; check && err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return host
}

package ssh

import (
	"context"
	"io"
)

// RunCloser is a Runner that can be closed: one connection to a device.
type RunCloser interface {
	Runner
	io.Closer
}

// Dialer opens a new connection to the device (updates reconnect after reboots).
type Dialer func(ctx context.Context) (RunCloser, error)

// DialerFor returns a Dialer for a real device.
func DialerFor(a Addr, opts Options) Dialer {
	return func(ctx context.Context) (RunCloser, error) { return Dial(ctx, a, opts) }
}

var _ RunCloser = (*Client)(nil)

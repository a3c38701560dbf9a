package stk500_test

import (
	"context"
	"fmt"
	"net"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
)

// Flash an emulated Arduino Uno over an in-memory line and prove it.
func Example() {
	dev := stk500test.New(stk500test.Uno())
	host, board := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go dev.Serve(ctx, board)
	defer host.Close()

	c := stk500.New(host, stk500.Config{
		Signature: [3]byte{0x1e, 0x95, 0x0f},
		PageSize:  128,
		Reset:     func(context.Context) error { dev.Reset(); return nil },
	})
	if err := c.Connect(ctx); err != nil {
		fmt.Println(err)
		return
	}
	img, _ := flash.NewImage("blink", flash.Segment{Addr: 0, Data: []byte{0x0c, 0x94, 0x34, 0x00}})
	res, err := flash.Program(ctx, c, img, nil)
	fmt.Println(c.Identity())
	fmt.Println(res.Verified, res.DeviceSHA256 == img.SHA256(), err)
	fmt.Printf("% x\n", dev.AppFlash()[:6])
	c.Close()
	// Output:
	// avr signature 1e950f, stk500v1 bootloader 8.3
	// true true <nil>
	// 0c 94 34 00 ff ff
}

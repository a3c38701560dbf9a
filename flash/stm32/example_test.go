package stm32_test

import (
	"context"
	"fmt"
	"net"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/stm32"
	"kiln.dev/kiln/flash/stm32/stm32test"
)

// Flash an image to an emulated Blue Pill and prove it by reading it back.
func Example() {
	b, _ := boards.Get("bluepill")
	dev, _ := stm32test.New(b)
	host, line := net.Pipe()
	defer host.Close()
	defer line.Close()
	ctx := context.Background()
	go dev.Serve(ctx, line)

	t, err := stm32.Open(ctx, host, b, stm32.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	img, _ := flash.ParseBin("hello.bin", []byte("hello, blue pill"), 0x08000000)
	res, err := flash.Program(ctx, t, img, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Device)
	fmt.Println("verified:", res.Verified, res.DeviceSHA256 == img.SHA256())
	fmt.Println("pages erased:", dev.Stats().Erases[:3])
	// Output:
	// stm32 product 0x410 bootloader v2.2 uid 36ffd8054e50373204100862
	// verified: true true
	// pages erased: [1 0 0]
}

package simavr_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"kiln.dev/kiln/internal/simavr"
)

// Run the Uno's bootloader in simavr, let a tool flash it through the pty,
// then read the flash the MCU holds.
func ExampleStart() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The real Optiboot image, beside the repository.
	sim, err := simavr.Start(ctx, simavr.Options{Bootloader: "../../../shared/peers/optiboot_atmega328_v8.3.hex"})
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()
	fmt.Println("flash it: avrdude -c arduino -p m328p -b 115200 -P", sim.Port, "-U flash:w:app.hex:i")
	// ... run the tool ...
	mem, err := sim.Flash(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes of flash, bootloader at 0x7e00 starts % x\n", len(mem), mem[0x7e00:0x7e04])
}

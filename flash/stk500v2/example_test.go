package stk500v2_test

import (
	"fmt"

	"kiln.dev/kiln/flash/stk500v2"
)

// A CMD_SIGN_ON frame as it goes on the wire, and back.
func ExampleEncode() {
	wire := stk500v2.Encode(1, []byte{stk500v2.CmdSignOn})
	fmt.Printf("% x\n", wire)
	f, n, err := stk500v2.Parse(wire)
	fmt.Println(f.Seq, f.Body, n, err)
	// Output:
	// 1b 01 00 01 0e 01 14
	// 1 [1] 7 <nil>
}

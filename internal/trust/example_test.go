package trust_test

import (
	"fmt"

	"kiln.dev/kiln/internal/trust"
)

// The trusted comment kiln signs: minisign's fields, then the artifact's
// SHA-256 and derivation hash, which `minisign -V` prints as they are.
func ExampleClaims() {
	c := trust.Claims{Timestamp: 1700000000, File: "firmware.hex", SHA256: "878ea3e4…", Derivation: "1ad1a214…"}
	fmt.Printf("%q\n", c.String())
	fmt.Println(trust.ParseClaims(c.String()).Derivation)
	// Output:
	// "timestamp:1700000000\tfile:firmware.hex\thashed\tsha256:878ea3e4…\tderivation:1ad1a214…"
	// 1ad1a214…
}

package attest_test

import (
	"fmt"

	"kiln.dev/kiln/internal/attest"
)

// A Debian package's purl, as the SBOM and the provenance name it.
func ExamplePackage_PURL() {
	p := attest.Package{Name: "gcc-avr", Sources: []string{"deb:gcc-avr=1:5.4.0+Atmel3.6.2-3"}, Arch: "amd64"}
	fmt.Println(p.PURL())
	// Output: pkg:deb/debian/gcc-avr@1:5.4.0%2BAtmel3.6.2-3?arch=amd64
}

// DSSE signs the pre-authentication encoding of the payload, not the
// payload alone.
func ExamplePAE() {
	fmt.Printf("%s\n", attest.PAE("application/vnd.in-toto+json", []byte(`{"_type":"…"}`)))
	// Output: DSSEv1 28 application/vnd.in-toto+json 15 {"_type":"…"}
}

package cli

import (
	"go/build"
	"strings"
	"testing"
)

// The CLI knows no protocol back end: device work goes through
// internal/op, back ends through flash/device's table. A new back end
// touches its package, the table and board files — nothing here.
func TestCLIImportsNoBackEnd(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	backEnds := []string{"stk500", "stk500v2", "stm32", "dfu", "ssh", "sshdev", "blockdev", "swd", "avr109"}
	for _, imp := range pkg.Imports {
		for _, be := range backEnds {
			if strings.HasPrefix(imp, "kiln.dev/kiln/flash/"+be) && (len(imp) == len("kiln.dev/kiln/flash/"+be) || imp[len("kiln.dev/kiln/flash/"+be)] == '/') {
				t.Errorf("internal/cli imports the back end %s", imp)
			}
		}
	}
}

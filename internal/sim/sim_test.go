package sim_test

import (
	"bytes"
	"debug/elf"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/internal/sim"
	"kiln.dev/kiln/recipes"
)

func ExampleDiff() {
	fmt.Println(sim.Diff("hello\r\nworld\r\n", "hello\r\nword\r\n"))
	// Output:
	//   hello\r
	// - world\r
	// + word\r
}

func blink(period time.Duration, n int) *sim.Result {
	res := &sim.Result{Simulated: time.Duration(n) * period / 2}
	res.Pins = append(res.Pins, sim.PinChange{At: 0, Pin: "PB5", Level: 0})
	for i := 1; i < n; i++ {
		res.Pins = append(res.Pins, sim.PinChange{At: time.Duration(i) * period / 2, Pin: "PB5", Level: i % 2})
	}
	return res
}

func TestExpectPinPeriod(t *testing.T) {
	pin := recipes.PinTest{Pin: "PB5", Period: "2000ms", Tolerance: "1%"}
	tc := recipes.Test{Name: "blink", For: "5s", Pins: []recipes.PinTest{pin}}
	if o := sim.Expect(tc, "", blink(2*time.Second, 6)); !o.Passed() {
		t.Errorf("a 2 s blink fails: %v", o.Failures)
	}
	if o := sim.Expect(tc, "", blink(2030*time.Millisecond, 6)); o.Passed() || !strings.Contains(o.Failures[0], "period 1: 2.03s") {
		t.Errorf("a 2.03 s blink passes a 2 s ± 1%% test: %v", o.Failures)
	}
	if o := sim.Expect(tc, "", blink(2*time.Second, 3)); o.Passed() || !strings.Contains(o.Failures[0], "saw 1 rising edges") {
		t.Errorf("one rising edge is not a period: %v", o.Failures)
	}
}

func TestExpectOutput(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "golden.txt"), []byte("a\nb\n"), 0o644)
	exact := "a\nb\n"
	res := &sim.Result{UART: []byte("a\nb\n"), Simulated: time.Second}
	for _, c := range []struct {
		test recipes.Test
		pass bool
		want string
	}{
		{recipes.Test{Output: &exact}, true, ""},
		{recipes.Test{Golden: "golden.txt"}, true, ""},
		{recipes.Test{Match: []string{"^a$", "^b$"}}, true, ""},
		{recipes.Test{Match: []string{"^b$", "^a$"}}, false, "match 2 of 2, /^a$/, not found"},
		{recipes.Test{Output: new(string)}, false, "+ a\n+ b"},
	} {
		o := sim.Expect(c.test, dir, res)
		if o.Passed() != c.pass || (c.want != "" && !strings.Contains(strings.Join(o.Failures, "\n"), c.want)) {
			t.Errorf("%+v: passed %v, failures %q, want %q", c.test, o.Passed(), o.Failures, c.want)
		}
	}
}

func TestJUnitParses(t *testing.T) {
	var buf bytes.Buffer
	res := &sim.Result{UART: []byte("ok\x00\x01"), Wall: 1500 * time.Millisecond}
	err := sim.WriteJUnit(&buf, []sim.Suite{
		{Name: "a", Properties: [][2]string{{"sha256", "00"}}, Outcomes: []*sim.Outcome{{Name: "t1", Result: res}, {Name: "t2", Failures: []string{"x <differs>\n- a\n+ b"}, Result: res}}},
		{Name: "b", Error: "recipe did not build"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Suites   []struct {
			Cases []struct {
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	dec := xml.NewDecoder(&buf)
	dec.Strict = true
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Tests != 3 || doc.Failures != 1 || doc.Errors != 1 || doc.Suites[0].Cases[1].Failure.Message != "x <differs>" ||
		!strings.Contains(doc.Suites[0].Cases[1].Failure.Text, "+ b") {
		t.Fatalf("%+v", doc)
	}
}

// avrELF links a minimal program for mcu with avr-gcc (its start-up code
// writes the device-info note).
func avrELF(t *testing.T, mcu string) string {
	t.Helper()
	if _, err := exec.LookPath("avr-gcc"); err != nil {
		t.Skip("avr-gcc is not installed")
	}
	dir := t.TempDir()
	src, out := filepath.Join(dir, "m.c"), filepath.Join(dir, mcu+".elf")
	os.WriteFile(src, []byte("int main(void) { for (;;) ; }\n"), 0o644)
	if b, err := exec.Command("avr-gcc", "-mmcu="+mcu, "-Os", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("avr-gcc: %v\n%s", err, b)
	}
	return out
}

func TestCheckAVRDevice(t *testing.T) {
	uno, _ := boards.Get("arduino-uno")
	mega, _ := boards.Get("arduino-mega2560")
	a, err := sim.LoadArtifact(avrELF(t, "atmega2560"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.MCU != "atmega2560" || a.Image.Machine != elf.EM_AVR {
		t.Fatalf("MCU %q, machine %v", a.MCU, a.Image.Machine)
	}
	if err := sim.Check(mega, a); err != nil {
		t.Errorf("the Mega refuses its own ELF: %v", err)
	}
	if err := sim.Check(uno, a); !errors.Is(err, sim.ErrWrongBoard) {
		t.Errorf("the Uno takes an ATmega2560 ELF: %v", err)
	}
}

func TestCheckCortexM(t *testing.T) {
	bp, _ := boards.Get("bluepill")
	vectors := func(sp, pc uint32) *sim.Artifact {
		b := []byte{byte(sp), byte(sp >> 8), byte(sp >> 16), byte(sp >> 24), byte(pc), byte(pc >> 8), byte(pc >> 16), byte(pc >> 24)}
		img, _ := flash.NewImage("v.bin", flash.Segment{Addr: 0x08000000, Data: b})
		return &sim.Artifact{Image: img, Path: "v.bin"}
	}
	if err := sim.Check(bp, vectors(0x20002000, 0x08000101)); err != nil {
		t.Errorf("stack at the top of the model's 8 KiB: %v", err)
	}
	if err := sim.Check(bp, vectors(0x20005000, 0x08000101)); !errors.Is(err, sim.ErrWrongBoard) || !strings.Contains(err.Error(), "stm32vldiscovery") {
		t.Errorf("stack past the model's RAM: %v", err)
	}
	if err := sim.Check(bp, vectors(0x20002000, 0x08000100)); !errors.Is(err, sim.ErrWrongBoard) {
		t.Errorf("an ARM-state reset vector: %v", err)
	}
	rpi, _ := boards.Get("rpi-4b")
	if err := sim.Check(rpi, vectors(0, 0)); !errors.Is(err, sim.ErrNoModel) {
		t.Errorf("a Raspberry Pi: %v", err)
	}
}

func TestWriteVCD(t *testing.T) {
	res := blink(2*time.Second, 3)
	res.Board = "arduino-uno"
	res.Frames = []sim.Frame{{At: 1000, Byte: 'A', Bit: 100, Bits: 10}, {At: 1000, Byte: 'B', Bit: 100, Bits: 10}}
	var buf bytes.Buffer
	if err := sim.WriteVCD(&buf, res, []string{"PB5"}); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	// 'A' (0x41) from 1000 ns: start bit, 1, 0 x5, 1, 0, stop; 'B' waits
	// for the line: it starts when 'A''s frame ends, at 2000 ns.
	for _, want := range []string{"$timescale 1ns $end", "$var wire 1 ! PB5 $end", "#1000\n0\"\nb01000001 #\n#1100\n1\"\n#1200\n0\"\n#1700\n1\"\n#1800\n0\"\n#1900\n1\"\n#2000\n0\"\nb01000010 #\n", "#1000000000\n1!\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("VCD lacks %q:\n%s", want, got)
		}
	}
}

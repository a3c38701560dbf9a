package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/sim"
	"kiln.dev/kiln/recipes"
)

// pinChanges parses kiln run's --pins lines ("   1000.022687 ms  PB5 0").
func pinChanges(t *testing.T, stderr, pin string) (at []time.Duration, levels []int) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*([0-9.]+) ms  ` + pin + ` ([01])$`)
	for _, m := range re.FindAllStringSubmatch(stderr, -1) {
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, time.Duration(ms*1e6))
		levels = append(levels, int(m[2][0]-'0'))
	}
	return at, levels
}

// TestRunBlinkUnoPins (must show 1): kiln run recipes/blink-uno --for 5s
// --pins PB5 shows PB5 toggling every 1000 ms of simulated time (±1%).
func TestRunBlinkUnoPins(t *testing.T) {
	t.Parallel()
	res := runKiln(t, nil, "run", "../../recipes/blink-uno", "--for", "5s", "--pins", "PB5")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	at, levels := pinChanges(t, res.stderr, "PB5")
	// The level at the start, setup's digitalWrite(HIGH), then a toggle
	// each second: at 1, 2, 3 and 4 s.
	if len(at) != 6 || at[0] != 0 || levels[0] != 0 {
		t.Fatalf("PB5 changes %v %v, want the start level and 5 toggles in 5 s:\n%s", at, levels, res.stderr)
	}
	for i := 2; i < len(at); i++ {
		d := at[i] - at[i-1]
		if d < 990*time.Millisecond || d > 1010*time.Millisecond {
			t.Errorf("PB5 toggle %d came %v after the one before, want 1000 ms ± 1%%", i, d)
		}
		if levels[i] == levels[i-1] {
			t.Errorf("PB5 change %d does not toggle: %v", i, levels)
		}
	}
	if !strings.Contains(res.stderr, "5.0000") || !regexp.MustCompile(`[0-9.]+x real time`).MatchString(res.stderr) {
		t.Errorf("no simulated time or ratio in the summary:\n%s", res.stderr)
	}
	if res.stdout != "" {
		t.Errorf("blink prints nothing on its UART, got %q", res.stdout)
	}
}

// copyRecipe copies a recipe directory (recipe.toml and src/) to a
// temporary one whose recipe.toml ends with extra instead of its tests.
func copyRecipe(t *testing.T, dir, extra string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == recipes.FileName {
			s := string(data)
			if i := strings.Index(s, "[[test]]"); i >= 0 {
				s = s[:i]
			}
			data = []byte(s + extra)
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestRunCortexMGreeting (must show 3): the NUCLEO-F401RE recipe prints its
// greeting under QEMU; its kiln test passes; a wrong expected string fails
// with exit 1 and a diff.
func TestRunCortexMGreeting(t *testing.T) {
	t.Parallel()
	needTool(t, "qemu-system-arm")
	dir := "../../recipes/hello-nucleo-f401re"
	res := runKiln(t, nil, "run", dir, "--for", "100ms")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "hello from nucleo-f401re\r\ntick 1\r\n") {
		t.Fatalf("kiln run: exit %d, stdout %q\n%s", res.code, res.stdout, res.stderr)
	}
	if !strings.Contains(res.stderr, "qemu netduinoplus2") || !strings.Contains(res.stderr, "x real time") {
		t.Errorf("summary does not name the machine and the ratio:\n%s", res.stderr)
	}

	res = runKiln(t, nil, "test", dir)
	if res.code != 0 || !strings.Contains(res.stdout, "PASS greets and ticks") || !strings.Contains(res.stdout, "1 passed, 0 failed") {
		t.Fatalf("kiln test: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	sha := regexp.MustCompile(`\(sha256 ([0-9a-f]{64})\)`).FindStringSubmatch(res.stdout)
	if sha == nil {
		t.Fatalf("kiln test does not name the artifact's sha256:\n%s", res.stdout)
	}
	m := regexp.MustCompile(`: (\S+/firmware\.elf) \(sha256`).FindStringSubmatch(res.stdout)
	if m == nil {
		t.Fatalf("kiln test does not name the store artifact:\n%s", res.stdout)
	}
	data, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(data)); got != sha[1] {
		t.Fatalf("reported sha256 %s, the store's firmware.elf has %s", sha[1], got)
	}

	wrong := copyRecipe(t, dir, `[[test]]
name = "wrong greeting"
for = "10ms"
output = "hello from nucleo-f401rf\r\n"
`)
	res = runKiln(t, nil, "test", wrong)
	want := "    - hello from nucleo-f401rf\\r\n    + hello from nucleo-f401re\\r\n"
	if res.code != 1 || !strings.Contains(res.stdout, "FAIL wrong greeting") || !strings.Contains(res.stdout, want) ||
		!strings.Contains(res.stdout, "0 passed, 1 failed") {
		t.Fatalf("wrong expected string: exit %d, want 1 and the diff\n%s\n%s", res.code, want, res.stdout)
	}
}

// TestJUnitThreeRecipes (must show 4): kiln test on three recipes in one
// CI-style run writes JUnit XML that a parser reads back with every suite,
// case and the artifacts' hashes.
func TestJUnitThreeRecipes(t *testing.T) {
	t.Parallel()
	needTool(t, "qemu-system-arm")
	out := filepath.Join(t.TempDir(), "junit.xml")
	dirs := []string{"../../recipes/blink-uno", "../../recipes/hello-nucleo-f401re", "../../recipes/hello-bluepill"}
	res := runKiln(t, nil, append([]string{"test", "--junit", out}, dirs...)...)
	if res.code != 0 {
		t.Fatalf("exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XMLName xml.Name `xml:"testsuites"`
		Tests   int      `xml:"tests,attr"`
		Fail    int      `xml:"failures,attr"`
		Suites  []struct {
			Name  string `xml:"name,attr"`
			Tests int    `xml:"tests,attr"`
			Props []struct {
				Name  string `xml:"name,attr"`
				Value string `xml:"value,attr"`
			} `xml:"properties>property"`
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Time    float64   `xml:"time,attr"`
				Failure *struct{} `xml:"failure"`
				Out     string    `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("JUnit XML does not parse: %v\n%s", err, data)
	}
	if doc.Tests != 3 || doc.Fail != 0 || len(doc.Suites) != 3 {
		t.Fatalf("testsuites: %d tests, %d failures, %d suites; want 3, 0, 3\n%s", doc.Tests, doc.Fail, len(doc.Suites), data)
	}
	for i, want := range []string{"blink-uno", "hello-nucleo-f401re", "hello-bluepill"} {
		s := doc.Suites[i]
		if s.Name != want || s.Tests != 1 || len(s.Cases) != 1 || s.Cases[0].Failure != nil || s.Cases[0].Time <= 0 {
			t.Errorf("suite %d: %+v", i, s)
		}
		props := map[string]string{}
		for _, p := range s.Props {
			props[p.Name] = p.Value
		}
		art, err := os.ReadFile(props["artifact"])
		if err != nil || fmt.Sprintf("%x", sha256.Sum256(art)) != props["sha256"] {
			t.Errorf("suite %s: artifact %q sha256 %q does not match the file (%v)", want, props["artifact"], props["sha256"], err)
		}
	}
	if !strings.HasPrefix(doc.Suites[2].Cases[0].Out, "hello from bluepill\r\n") {
		t.Errorf("bluepill system-out: %q", doc.Suites[2].Cases[0].Out)
	}
}

// asciiTable is what ASCIITable.ino's loop prints, computed here from the
// sketch's own definition (Serial.println: "\r\n"; HEX upper case).
func asciiTable() string {
	var b strings.Builder
	b.WriteString("ASCII Table ~ Character Map\r\n")
	for c := 33; c <= 126; c++ {
		fmt.Fprintf(&b, "%c, dec: %d, hex: %X, oct: %o, bin: %b\r\n", c, c, c, c, c)
	}
	return b.String()
}

// TestRunASCIITable (must show 2): the ASCIITable example from Debian's
// arduino package, built by kiln, prints exactly the table its code
// defines, on the Uno and on the Mega 2560.
func TestRunASCIITable(t *testing.T) {
	t.Parallel()
	want := asciiTable()
	uno := "../../testdata/sketches/asciitable-uno"
	// The same sketch for the Mega 2560: the Uno recipe with another board.
	mega := copyRecipe(t, uno, "")
	recipe := filepath.Join(mega, recipes.FileName)
	text, err := os.ReadFile(recipe)
	if err != nil {
		t.Fatal(err)
	}
	text = bytes.Replace(text, []byte(`name = "asciitable-uno"`), []byte(`name = "asciitable-mega2560"`), 1)
	text = bytes.Replace(text, []byte(`board = "arduino-uno"`), []byte(`board = "arduino-mega2560"`), 1)
	if err := os.WriteFile(recipe, text, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, dir := range map[string]string{"uno": uno, "mega2560": mega} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// 9600 baud: 4.4 s of simulated time for the 4.2 KB table.
			res := runKiln(t, nil, "run", dir, "--for", "6s")
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			if res.stdout != want {
				t.Fatalf("the table differs (- expected, + actual):\n%s", sim.Diff(want, res.stdout))
			}
			if name == "mega2560" && !strings.Contains(res.stderr, "on simavr atmega2560") {
				t.Errorf("not run on the ATmega2560:\n%s", res.stderr)
			}
		})
	}
}

// TestRunSerialCallResponse (must show 2): SerialCallResponse sends 'A'
// every 300 ms until a byte arrives on stdin, then answers each byte with
// its three sensor readings (nothing drives them under kiln run: zeros).
func TestRunSerialCallResponse(t *testing.T) {
	t.Parallel()
	dir := "../../testdata/sketches/serialcallresponse-uno"
	cmd := exec.Command(kilnBin, "run", dir, "--for", "2s", "--input", "-", "--input-at", "1s")
	cmd.Stdin = strings.NewReader("xy")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	// 'A' at 0, 0.3, 0.6 and 0.9 s; the check at 1.2 s finds the byte.
	if want := "AAAA\x00\x00\x00\x00\x00\x00"; out.String() != want {
		t.Fatalf("stdout %q, want %q\n%s", out.String(), want, errb.String())
	}
	// Its [[test]] drives A0, A1 and pin 2, and expects their readings.
	res := runKiln(t, nil, "test", dir)
	if res.code != 0 || !strings.Contains(res.stdout, "PASS answers with the sensors") {
		t.Fatalf("kiln test: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// TestRunWithOptiboot (must show 5): with the real Optiboot 8.3 in the
// bootloader area, the Uno starts in Optiboot after an external reset
// (Optiboot flashes the LED three times), Optiboot's watchdog times out to
// the application, and blink runs.
func TestRunWithOptiboot(t *testing.T) {
	t.Parallel()
	boot, err := filepath.Abs("../../../shared/peers/optiboot_atmega328_v8.3.hex")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(boot); err != nil {
		t.Skipf("the Optiboot 8.3 peer image is not here: %v", err)
	}
	res := runKiln(t, nil, "run", "../../recipes/blink-uno", "--with-bootloader", boot, "--for", "4s", "--pins", "PB5")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	m := regexp.MustCompile(`the bootloader started the application at ([0-9.]+)s`).FindStringSubmatch(res.stderr)
	if m == nil {
		t.Fatalf("the application never started:\n%s", res.stderr)
	}
	appAt, _ := strconv.ParseFloat(m[1], 64)
	// Optiboot 8.3: three LED flashes (about 0.4 s), then a 1 s watchdog.
	if appAt < 1.2 || appAt > 1.6 {
		t.Errorf("the application started at %.3f s, want about 1.4 s (flashes + Optiboot's 1 s timeout)", appAt)
	}
	at, _ := pinChanges(t, res.stderr, "PB5")
	var boot6, app []time.Duration
	for i, a := range at {
		if a.Seconds() < appAt && i > 0 {
			boot6 = append(boot6, a)
		} else if a.Seconds() >= appAt {
			app = append(app, a)
		}
	}
	if len(boot6) != 6 {
		t.Errorf("Optiboot's LED: %d changes before the application, want 6 (3 flashes)\n%s", len(boot6), res.stderr)
	}
	if len(app) != 3 {
		t.Fatalf("blink after Optiboot: %d changes, want 3 (at start, +1 s, +2 s)\n%s", len(app), res.stderr)
	}
	for i := 1; i < len(app); i++ {
		if d := app[i] - app[i-1]; d < 990*time.Millisecond || d > 1010*time.Millisecond {
			t.Errorf("blink toggle %d after %v, want 1000 ms ± 1%%", i, d)
		}
	}
}

// TestRunLeonardo: an ATmega32u4 board runs in simavr's 32u4 core:
// Debian's Blink built for the Leonardo toggles LED_BUILTIN (PC7) every
// second of simulated time, checked by the recipe's own [[test]].
func TestRunLeonardo(t *testing.T) {
	t.Parallel()
	res := runKiln(t, nil, "test", "../../testdata/sketches/blink-leonardo")
	if res.code != 0 || !strings.Contains(res.stdout, "PASS blinks at 0.5 Hz") {
		t.Fatalf("kiln test: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// TestSketchesAreDebians: the sketches under testdata/sketches are the
// examples Debian's arduino package installs, byte for byte.
func TestSketchesAreDebians(t *testing.T) {
	for ino, sum := range map[string]string{
		"asciitable-uno/ASCIITable/ASCIITable.ino":                         "66ac7543a330ee80860c520496d962c63710ffc56e18352bc7ff93ce62ccbcf6",
		"serialcallresponse-uno/SerialCallResponse/SerialCallResponse.ino": "0db1fb311b5fcec07696e30608dbd4077bee50b41eeca04b3d68c82548cf79de",
	} {
		data, err := os.ReadFile("../../testdata/sketches/" + ino)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(data)); got != sum {
			t.Errorf("%s: sha256 %s, Debian's is %s", ino, got, sum)
		}
		deb, err := os.ReadFile("/usr/share/arduino/examples/04.Communication/" + filepath.Base(filepath.Dir(ino)) + "/" + filepath.Base(ino))
		if err == nil && !bytes.Equal(deb, data) {
			t.Errorf("%s differs from the installed Debian example", ino)
		}
	}
}

// TestRunVCDReadByGTKWave: --vcd writes a dump GTKWave's own reader takes
// (vcd2fst, then fst2vcd back), and the UART line in it, decoded bit by
// bit at 9600 baud, carries exactly the bytes kiln run printed.
func TestRunVCDReadByGTKWave(t *testing.T) {
	t.Parallel()
	needTool(t, "vcd2fst")
	dir := t.TempDir()
	vcd, fst := filepath.Join(dir, "run.vcd"), filepath.Join(dir, "run.fst")
	res := runKiln(t, nil, "run", "../../testdata/sketches/asciitable-uno", "--for", "100ms", "--pins", "PB5", "--vcd", vcd)
	if res.code != 0 || len(res.stdout) < 50 {
		t.Fatalf("exit %d, stdout %q: %s", res.code, res.stdout, res.stderr)
	}
	if out, err := exec.Command("vcd2fst", vcd, fst).CombinedOutput(); err != nil {
		t.Fatalf("vcd2fst: %v\n%s", err, out)
	}
	back, err := exec.Command("fst2vcd", fst).Output()
	if err != nil {
		t.Fatalf("fst2vcd: %v", err)
	}
	m := regexp.MustCompile(`\$var wire 1 (\S+) uart_tx \$end`).FindSubmatch(back)
	if m == nil {
		t.Fatalf("no uart_tx in GTKWave's dump:\n%s", back)
	}
	id := string(m[1])
	type edge struct {
		at    int64
		level byte
	}
	var edges []edge
	var now int64
	for _, line := range strings.Split(string(back), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
			now, _ = strconv.ParseInt(line[1:], 10, 64)
		case len(line) == 1+len(id) && line[1:] == id && (line[0] == '0' || line[0] == '1'):
			edges = append(edges, edge{now, line[0] - '0'})
		}
	}
	level := func(at int64) byte {
		l := byte(1)
		for _, e := range edges {
			if e.at > at {
				break
			}
			l = e.level
		}
		return l
	}
	// Decode 8N1 at 9600 baud, sampling mid-bit, as a receiver would.
	const bit = int64(1e9) / 9600
	var got []byte
	for i := 0; i < len(edges); i++ {
		e := edges[i]
		if e.level != 0 {
			continue
		}
		var b byte
		for k := int64(0); k < 8; k++ {
			b |= level(e.at+bit/2+(k+1)*bit) << k
		}
		if level(e.at+bit/2+9*bit) != 1 {
			t.Fatalf("no stop bit after the start bit at %d ns", e.at)
		}
		got = append(got, b)
		for i+1 < len(edges) && edges[i+1].at < e.at+bit*19/2 {
			i++ // edges inside this frame
		}
	}
	if string(got) != res.stdout {
		t.Fatalf("the UART line in the VCD decodes to %q, kiln run printed %q", got, res.stdout)
	}
}

// TestRunRefusals: bad inputs are refused with one clear error, a hint and
// exit 1 (2 for a missing --board), before anything runs.
func TestRunRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A relocatable object: an ELF with no loadable segment.
	obj := filepath.Join(dir, "empty.o")
	src := filepath.Join(dir, "empty.c")
	if err := os.WriteFile(src, []byte("int x;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("avr-gcc", "-mmcu=atmega328p", "-c", "-o", obj, src).CombinedOutput(); err != nil {
		t.Fatalf("avr-gcc: %v\n%s", err, out)
	}
	mega := runKiln(t, nil, "run", "../../recipes/blink-mega2560", "--for", "1ms", "--json")
	var megaRun struct{ Artifact string }
	if err := json.Unmarshal([]byte(mega.stdout), &megaRun); err != nil || mega.code != 0 {
		t.Fatalf("blink-mega2560: exit %d, %v: %s", mega.code, err, mega.stderr)
	}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"firmware for another board", []string{"--board", "arduino-uno", megaRun.Artifact}, 1,
			"firmware for another board: built for the atmega2560 (its ELF says so), but arduino-uno has the atmega328p"},
		{"build dir for another board", []string{"--board", "nucleo-f401re", filepath.Dir(megaRun.Artifact)}, 1,
			"firmware for another board: built for arduino-mega2560, not nucleo-f401re"},
		{"unknown board", []string{"--board", "arduino-unoo", megaRun.Artifact}, 1, `unknown board "arduino-unoo"`},
		{"no board", []string{strings.TrimSuffix(megaRun.Artifact, ".elf") + ".hex"}, 2, "does not say which board it is for: give --board"},
		{"ELF without loadable segment", []string{"--board", "arduino-uno", obj}, 1, "ELF has no loadable segment"},
		{"board without a simulator", []string{"--board", "rpi-4b", filepath.Dir(megaRun.Artifact)}, 1,
			"no simulator model for the board: it is aarch64"},
		{"stack past the QEMU model's RAM", []string{"../../recipes/blink-bluepill", "--for", "10ms"}, 1,
			"the initial stack pointer 0x20005000 is outside the RAM of QEMU's stm32vldiscovery model"},
		{"pins under QEMU", []string{"../../recipes/hello-nucleo-f401re", "--pins", "PA5", "--for", "10ms"}, 1,
			"QEMU netduinoplus2 does not model GPIO"},
	} {
		res := runKiln(t, nil, append([]string{"run"}, c.args...)...)
		if res.code != c.code || !strings.Contains(res.stderr, c.want) {
			t.Errorf("%s: exit %d (want %d), stderr:\n%s\nwant %q", c.name, res.code, c.code, res.stderr, c.want)
		}
		if !strings.Contains(res.stderr, "hint: ") {
			t.Errorf("%s: no hint:\n%s", c.name, res.stderr)
		}
	}
}

// TestTestTimeoutShowsOutput: a test whose expected output never comes
// fails when its simulated time is up, with what the UART sent so far.
func TestTestTimeoutShowsOutput(t *testing.T) {
	t.Parallel()
	needTool(t, "qemu-system-arm")
	dir := copyRecipe(t, "../../recipes/hello-bluepill", `[[test]]
name = "never says goodbye"
for = "50ms"
match = ['^hello from bluepill', '^goodbye']
`)
	res := runKiln(t, nil, "test", dir)
	if res.code != 1 || !strings.Contains(res.stdout, "FAIL never says goodbye") ||
		!strings.Contains(res.stdout, "match 2 of 2, /^goodbye/, not found in ") ||
		!strings.Contains(res.stdout, "tick 1") {
		t.Fatalf("exit %d, want 1 with the output seen:\n%s%s", res.code, res.stdout, res.stderr)
	}
}

package cli

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/recipes"
)

// The tests in this file run the real kiln binary (kilnBin, built without
// -race by TestMain: fetching unpacks megabytes of xz, which the race
// detector slows tenfold).

type result struct {
	code           int
	stdout, stderr string
}

// runKiln runs the binary (through prefix, such as unshare -n) and returns
// its exit code and output.
func runKiln(t *testing.T, prefix []string, args ...string) result {
	t.Helper()
	argv := append(append([]string(nil), prefix...), kilnBin)
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return result{code, out.String(), errb.String()}
}

// TestHashWithoutNetwork runs kiln hash in a new network namespace, which
// has nothing but a down loopback interface.
func TestHashWithoutNetwork(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("util-linux unshare does not exist on this platform")
	}
	if out, err := exec.Command("unshare", "-n", "true").CombinedOutput(); err != nil {
		t.Skipf("network namespaces are not allowed here: %v %s", err, out)
	}
	links, err := exec.Command("unshare", "-n", "ip", "-o", "link").Output()
	if err != nil || strings.Count(strings.TrimSpace(string(links)), "\n") != 0 || !strings.Contains(string(links), "lo:") {
		t.Fatalf("the namespace is not network-less: %v %s", err, links)
	}
	dir := "../../recipes/blink-uno"
	if _, err := os.Stat(filepath.Join(dir, recipes.FileName)); err != nil {
		t.Fatalf("example recipe: %v", err)
	}
	r, err := recipes.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Derive()
	if err != nil {
		t.Fatal(err)
	}
	res := runKiln(t, []string{"unshare", "-n"}, "hash", dir)
	if res.code != 0 || res.stdout != d.Hash()+"\n" || res.stderr != "" {
		t.Fatalf("kiln hash under unshare -n: exit %d, stdout %q (want %s), stderr %q", res.code, res.stdout, d.Hash(), res.stderr)
	}
	res = runKiln(t, []string{"unshare", "-n"}, "hash", "--json", dir)
	var rep hashReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || res.code != 0 {
		t.Fatalf("--json: %v, exit %d, %s", err, res.code, res.stdout)
	}
	if rep.Derivation != d.Hash() || rep.Name != "blink-uno" || rep.Board != "arduino-uno" || rep.Toolchain != "avr-gcc-5.4" ||
		len(rep.Sources) == 0 || len(rep.Inputs) != 1 || rep.Inputs[0].Name != "arduino-core-avr" {
		t.Errorf("--json report %+v", rep)
	}
	// --canonical prints the JSON that is hashed.
	res = runKiln(t, nil, "hash", "--canonical", dir)
	if res.code != 0 || strings.TrimSpace(res.stdout) != string(d.JSON()) {
		t.Errorf("--canonical: exit %d: %s", res.code, res.stdout)
	}

	// The same recipe copied elsewhere has the same hash.
	cp := filepath.Join(t.TempDir(), "elsewhere", "blink-uno")
	if _, err := exec.Command("cp", "-r", dir, cp).CombinedOutput(); err != nil {
		os.MkdirAll(filepath.Dir(cp), 0o755)
		var out []byte
		if out, err = exec.Command("cp", "-r", dir, cp).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	if res := runKiln(t, []string{"unshare", "-n"}, "hash", cp); res.stdout != d.Hash()+"\n" {
		t.Errorf("hash of a copy: %q, want %s", res.stdout, d.Hash())
	}
}

// TestHashErrors: bad recipes are one line naming the file, plus hints, exit 1.
func TestHashErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "src", "a.c"), []byte("int x;\n"), 0o644)
	write := func(s string) { os.WriteFile(filepath.Join(dir, recipes.FileName), []byte(s), 0o644) }
	file := filepath.Join(dir, recipes.FileName)
	head := "name = \"a\"\nversion = \"1\"\n"
	cases := []struct{ recipe, first, hint string }{
		{head + "board = \"arduino-unoo\"\ntoolchain = \"avr-gcc-5.4\"\nsources = [\"src/*.c\"]\n",
			"kiln: " + file + ":3:1: unknown board \"arduino-unoo\"", "hint: kiln boards lists"},
		{head + "board = \"arduino-uno\"\ntoolchain = \"avr-gcc-4\"\nsources = [\"src/*.c\"]\n",
			"kiln: " + file + ":4:1: unknown toolchain \"avr-gcc-4\"", "hint: toolchain closures are data"},
		{head + "board = \"arduino-uno\n",
			"kiln: " + file + ":3:", ""},
		{head + "board = \"arduino-uno\"\ntoolchain = \"avr-gcc-5.4\"\nsources = [\"src/*.cpp\"]\n",
			"kiln: " + file + ": source glob \"src/*.cpp\" matches no file", "hint: source globs are relative"},
	}
	for _, c := range cases {
		write(c.recipe)
		res := runKiln(t, nil, "hash", dir)
		lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
		if res.code != 1 || !strings.HasPrefix(lines[0], c.first) || res.stdout != "" {
			t.Errorf("exit %d, stderr %q, want first line %q", res.code, res.stderr, c.first)
		}
		if c.hint != "" && (len(lines) != 2 || !strings.HasPrefix(lines[1], c.hint)) {
			t.Errorf("stderr %q, want hint %q", res.stderr, c.hint)
		}
	}
	if res := runKiln(t, nil, "hash"); res.code != 2 {
		t.Errorf("kiln hash without a directory: exit %d", res.code)
	}
}

// TestFetchStoreCLI: kiln fetch gets a real toolchain closure and an input
// into a fresh store; the closure compiles and links a program for the Uno;
// kiln store ls, verify and gc see and judge the entries.
func TestFetchStoreCLI(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get does not exist on this platform")
	}
	st := filepath.Join(t.TempDir(), "store")
	dir := t.TempDir()
	blob := []byte("a vendored table\n")
	os.WriteFile(filepath.Join(dir, "table.bin"), blob, 0o644)
	os.WriteFile(filepath.Join(dir, "main.c"), []byte("#include <avr/io.h>\nint main(void) { DDRB = 1 << 5; for (;;) PORTB ^= 1 << 5; }\n"), 0o644)
	recipe := func(sha string) string {
		return "name = \"fetchme\"\nversion = \"1\"\nboard = \"arduino-uno\"\ntoolchain = \"avr-gcc-5.4\"\nsources = [\"*.c\"]\n" +
			"[[inputs]]\nname = \"table\"\nsources = [\"file:table.bin\"]\nsha256 = \"" + sha + "\"\n"
	}
	sum := recipesHash(blob)
	os.WriteFile(filepath.Join(dir, recipes.FileName), []byte(recipe(sum)), 0o644)
	res := runKiln(t, nil, "fetch", "--store", st, dir)
	if res.code != 0 {
		t.Fatalf("kiln fetch: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "kiln: fetch gcc-avr from deb:gcc-avr=") || !strings.Contains(res.stderr, "kiln: unpack avr-libc") {
		t.Errorf("progress lines missing:\n%s", res.stderr)
	}
	paths := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(res.stdout), "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 3 || !strings.HasPrefix(f[2], st+"/") {
			t.Fatalf("stdout line %q", l)
		}
		paths[f[1]] = f[2]
	}
	tcPath, inPath := paths["avr-gcc-5.4"], paths["table"]
	if tcPath == "" || inPath == "" {
		t.Fatalf("stdout %q", res.stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(inPath, "table")); string(b) != string(blob) {
		t.Errorf("input entry holds %q", b)
	}

	// The closure alone compiles and links: nothing from the host but libc.
	tc, _ := recipes.LoadToolchain("avr-gcc-5.4")
	var libs []string
	for _, l := range tc.LibDirs {
		libs = append(libs, filepath.Join(tcPath, l))
	}
	elfOut := filepath.Join(t.TempDir(), "main.elf")
	cc := exec.Command(filepath.Join(tcPath, tc.Tool("gcc")), "-mmcu=atmega328p", "-Os", "-o", elfOut, filepath.Join(dir, "main.c"))
	cc.Env = []string{"PATH=" + filepath.Join(tcPath, tc.BinDir), "LD_LIBRARY_PATH=" + strings.Join(libs, ":"), "LC_ALL=C"}
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("avr-gcc from the store: %v\n%s", err, out)
	}
	if ef, err := elf.Open(elfOut); err != nil || ef.Machine != elf.EM_AVR {
		t.Errorf("output is not an AVR ELF: %v", err)
	}

	// The closure is complete: every shared library any executable in the
	// tree needs is in the tree, or is libc6's (the host impurity it names).
	libc6 := map[string]bool{"libc.so.6": true, "libm.so.6": true, "libdl.so.2": true, "ld-linux-x86-64.so.2": true}
	checked := 0
	filepath.Walk(tcPath, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		ef, err := elf.Open(p)
		if err != nil {
			return nil // not an ELF file
		}
		defer ef.Close()
		if ef.Machine != elf.EM_X86_64 {
			return nil
		}
		need, _ := ef.ImportedLibraries()
		for _, lib := range need {
			found := libc6[lib]
			for _, l := range libs {
				if _, err := os.Stat(filepath.Join(l, lib)); err == nil {
					found = true
				}
			}
			if !found {
				t.Errorf("%s needs %s, which is neither in the closure nor libc6's", strings.TrimPrefix(p, tcPath), lib)
			}
		}
		checked++
		return nil
	})
	t.Logf("%d x86-64 ELF files of the closure checked", checked)
	if checked < 10 {
		t.Errorf("only %d host executables in the avr-gcc tree", checked)
	}

	// A warm fetch is all store hits: no apt, no download, same paths.
	res = runKiln(t, nil, "fetch", "--json", "--store", st, dir)
	if res.code != 0 || strings.Contains(res.stderr, "fetch ") {
		t.Errorf("warm fetch: exit %d, stderr %q", res.code, res.stderr)
	}
	var fj struct {
		Derivation string
		Fetched    []fetchedPath
	}
	if err := json.Unmarshal([]byte(res.stdout), &fj); err != nil || len(fj.Fetched) != 2 ||
		fj.Fetched[0] != (fetchedPath{"toolchain", "avr-gcc-5.4", tcPath}) || fj.Fetched[1] != (fetchedPath{"input", "table", inPath}) ||
		len(fj.Derivation) != 64 {
		t.Errorf("fetch --json: %v %s", err, res.stdout)
	}

	res = runKiln(t, nil, "store", "ls", "--json", "--store", st)
	var ls struct {
		Entries []struct{ Name, Hash, Path string }
	}
	if err := json.Unmarshal([]byte(res.stdout), &ls); err != nil || len(ls.Entries) != 2 {
		t.Fatalf("store ls: %v %s", err, res.stdout)
	}
	if res := runKiln(t, nil, "store", "verify", "--store", st); res.code != 0 || strings.Count(res.stdout, "ok\t") != 2 {
		t.Errorf("store verify: exit %d %s %s", res.code, res.stdout, res.stderr)
	}

	// Tamper with one byte of the input entry.
	f := filepath.Join(inPath, "table")
	os.Chmod(f, 0o644)
	os.WriteFile(f, []byte("A vendored table\n"), 0o444)
	res = runKiln(t, nil, "store", "verify", "--store", st)
	entry := filepath.Base(inPath)
	if res.code != 1 || !strings.Contains(res.stdout, "TAMPERED\t"+entry) || !strings.Contains(res.stdout, "ok\t"+filepath.Base(tcPath)) ||
		!strings.HasPrefix(res.stderr, "kiln: store verify: store entry tampered: 1 of 2 entries: "+entry) {
		t.Errorf("verify of a tampered store: exit %d\nstdout %s\nstderr %s", res.code, res.stdout, res.stderr)
	}
	if res := runKiln(t, nil, "store", "verify", "--store", st, filepath.Base(tcPath)); res.code != 0 {
		t.Errorf("verify of one good entry: exit %d %s", res.code, res.stderr)
	}

	// gc: without --keep only leftovers go; with --keep what the recipe
	// does not use goes; --all empties the store.
	os.MkdirAll(filepath.Join(st, ".tmp-2147483646-x"), 0o755)
	res = runKiln(t, nil, "store", "gc", "--store", st)
	if _, err := os.Stat(filepath.Join(st, ".tmp-2147483646-x")); res.code != 0 || err == nil {
		t.Errorf("gc left a dead leftover: exit %d %v", res.code, err)
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644)
	os.WriteFile(filepath.Join(other, recipes.FileName), []byte("name = \"other\"\nversion = \"1\"\nboard = \"arduino-uno\"\ntoolchain = \"avr-gcc-5.4\"\nsources = [\"*.c\"]\n"), 0o644)
	if res := runKiln(t, nil, "store", "gc", "--dry-run", "--keep", other, "--store", st); res.code != 0 || res.stdout != "would remove\t"+entry+"\n" {
		t.Errorf("gc --dry-run: exit %d %q %s", res.code, res.stdout, res.stderr)
	}
	if res := runKiln(t, nil, "store", "gc", "--keep", dir, "--store", st); res.code != 0 || res.stdout != "" {
		t.Errorf("gc --keep of the recipe using both: exit %d %q", res.code, res.stdout)
	}
	if res := runKiln(t, nil, "store", "gc", "--keep", other, "--store", st); res.code != 0 || res.stdout != "removed\t"+entry+"\n" {
		t.Errorf("gc --keep other: exit %d %q %s", res.code, res.stdout, res.stderr)
	}
	if res := runKiln(t, nil, "store", "gc", "--all", "--store", st); res.code != 0 || !strings.Contains(res.stdout, filepath.Base(tcPath)) {
		t.Errorf("gc --all: exit %d %q", res.code, res.stdout)
	}
	if ents, _ := os.ReadDir(st); len(ents) != 0 {
		t.Errorf("store not empty after gc --all: %v", ents)
	}
}

// TestFetchMismatchCLI: an input whose sha256 does not match is refused
// with both hashes named, a hint, exit 1, and nothing in the store.
func TestFetchMismatchCLI(t *testing.T) {
	t.Parallel()
	st := filepath.Join(t.TempDir(), "store")
	dir := t.TempDir()
	real := []byte("the real table\n")
	os.WriteFile(filepath.Join(dir, "table.bin"), real, 0o644)
	os.WriteFile(filepath.Join(dir, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644)
	want := strings.Repeat("e", 64)
	os.WriteFile(filepath.Join(dir, recipes.FileName), []byte("name = \"bad-pin\"\nversion = \"1\"\nboard = \"arduino-uno\"\n"+
		"toolchain = \"avr-gcc-5.4\"\nsources = [\"*.c\"]\n[[inputs]]\nname = \"table\"\nsources = [\"file:table.bin\"]\nsha256 = \""+want+"\"\n"), 0o644)
	res := runKiln(t, nil, "fetch", "--store", st, dir)
	lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
	var errLine string
	var hints int
	for _, l := range lines {
		if strings.HasPrefix(l, "kiln: fetch: table:") {
			errLine = l
		}
		if strings.HasPrefix(l, "hint: ") {
			hints++
		}
	}
	if res.code != 1 || !strings.Contains(errLine, "sha256 mismatch: expected "+want+", got "+recipesHash(real)) || hints == 0 {
		t.Errorf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	if ents, _ := os.ReadDir(st); len(ents) != 0 {
		t.Errorf("the store holds %v after a refused fetch", ents)
	}
}

func recipesHash(b []byte) string {
	f, _ := os.CreateTemp("", "kiln-hash")
	defer os.Remove(f.Name())
	f.Write(b)
	f.Close()
	s, _ := recipes.HashFile(f.Name())
	return s
}

package cli

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/attest/attesttest"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/trust"
)

// kiln runs the CLI in-process.
func kiln(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), append([]string{"kiln"}, args...), nil, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestKeygenSignVerifySig: the CLI's keys and signatures work with Debian's
// minisign, and a changed file is refused with exit 4.
func TestKeygenSignVerifySig(t *testing.T) {
	needTool(t, "minisign")
	dir := t.TempDir()
	key := filepath.Join(dir, "release.key")
	if code, out, errOut := kiln(t, "keygen", "--key", key); code != 0 || !strings.Contains(out, "key id") {
		t.Fatalf("keygen: exit %d: %s %s", code, out, errOut)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret key mode: %v %v", st.Mode(), err)
	}
	if code, _, errOut := kiln(t, "keygen", "--key", key); code != ExitFailure || !strings.Contains(errOut, "hint: pass --force") {
		t.Fatalf("keygen over an existing key: exit %d: %s", code, errOut)
	}
	pub := filepath.Join(dir, "release.pub")
	hex := writeHex(t, dir, "fw.hex", 0, randomBytes(7, 900))
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"derivation":"feedface","outputs":{"fw.hex":{}}}`), 0o644)
	if code, out, errOut := kiln(t, "sign", hex, "--key", key); code != 0 || !strings.Contains(out, "signed "+hex) {
		t.Fatalf("sign: exit %d: %s %s", code, out, errOut)
	}
	sig, _ := os.ReadFile(hex + ".minisig")
	if !strings.Contains(string(sig), "\tderivation:feedface") || !strings.Contains(string(sig), "\tsha256:") {
		t.Fatalf("trusted comment lacks the hashes:\n%s", sig)
	}
	if out, err := exec.Command("minisign", "-V", "-p", pub, "-m", hex).CombinedOutput(); err != nil {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}
	code, out, errOut := kiln(t, "verify-sig", hex, "--pub", pub)
	if code != 0 || !strings.Contains(out, "signature ok") || !strings.Contains(out, "derivation:feedface") {
		t.Fatalf("verify-sig: exit %d: %s %s", code, out, errOut)
	}
	// A signature made by minisign with kiln's key verifies with -P.
	pk, _ := os.ReadFile(pub)
	p, _ := trust.ParsePublicKey(pk)
	if out, err := exec.Command("minisign", "-S", "-W", "-s", key, "-m", hex, "-x", hex+".ms").CombinedOutput(); err != nil {
		t.Fatalf("minisign -S: %v\n%s", err, out)
	}
	if code, _, errOut := kiln(t, "verify-sig", "-P", p.String(), "--sig", hex+".ms", hex); code != 0 {
		t.Fatalf("verify-sig of minisign's signature: exit %d: %s", code, errOut)
	}
	// One changed byte: exit 4, for kiln and for minisign.
	data, _ := os.ReadFile(hex)
	data[20] ^= 1
	os.WriteFile(hex, data, 0o644)
	if code, _, errOut := kiln(t, "verify-sig", hex, "--pub", pub); code != ExitUntrusted || !strings.Contains(errOut, "signature verification failed") {
		t.Fatalf("changed file: exit %d: %s", code, errOut)
	}
	if out, err := exec.Command("minisign", "-V", "-p", pub, "-m", hex).CombinedOutput(); err == nil {
		t.Fatalf("minisign accepted the changed file: %s", out)
	}
	if code, _, _ := kiln(t, "verify-sig", filepath.Join(dir, "manifest.json"), "--pub", pub); code != ExitUntrusted {
		t.Fatalf("unsigned file: exit %d", code)
	}
}

// policyFixture makes a trusted key, a stranger's key and a policy that
// requires signatures for every Arduino.
func policyFixture(t *testing.T, dir string) (trusted, stranger *trust.SecretKey, policy string) {
	t.Helper()
	trusted, _ = trust.GenerateKey(nil)
	stranger, _ = trust.GenerateKey(nil)
	policy = filepath.Join(dir, "policy.toml")
	src := "[[key]]\nname = \"release\"\npublic_key = \"" + trusted.Public().String() + "\"\n\n" +
		"[[rule]]\nboards = [\"arduino-*\"]\nrequire_signature = true\n"
	if err := os.WriteFile(policy, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return trusted, stranger, policy
}

func signFile(t *testing.T, sk *trust.SecretKey, file, sigFile string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := trust.SignArtifact(sk, bytes.NewReader(data), filepath.Base(file), "", time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sigFile, s.Encode(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFlashRefusesUntrustedBeforeDeviceIO: with a policy that requires
// signatures, unsigned, wrongly signed and altered artifacts exit 4 and the
// device is never opened; a well-signed one is flashed. Every attempt is in
// the audit log.
func TestFlashRefusesUntrustedBeforeDeviceIO(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	trusted, stranger, policy := policyFixture(t, dir)
	opens := 0
	orig := openDevice
	openDevice = func(ctx context.Context, spec string, b *boards.Board, protocol string, opts device.Options) (device.Session, error) {
		opens++
		return orig(ctx, spec, b, protocol, opts)
	}
	t.Cleanup(func() { openDevice = orig })

	img := randomBytes(11, 1500)
	unsigned := writeHex(t, dir, "unsigned.hex", 0, img)
	wrong := writeHex(t, dir, "wrong.hex", 0, img)
	signFile(t, stranger, wrong, wrong+".minisig")
	altered := writeHex(t, dir, "altered.hex", 0, img)
	signFile(t, trusted, altered, altered+".minisig")
	writeHex(t, dir, "altered.hex", 0, append(append([]byte(nil), img[:100]...), append([]byte{img[100] ^ 1}, img[101:]...)...))
	good := writeHex(t, dir, "good.hex", 0, img)
	signFile(t, trusted, good, good+".minisig")
	elsewhere := writeHex(t, dir, "elsewhere.hex", 0, img)
	signFile(t, trusted, elsewhere, filepath.Join(dir, "elsewhere.sig"))

	flashArgs := func(art string, extra ...string) []string {
		return append([]string{"flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", "--policy", policy, "--log", log}, append(extra, art)...)
	}
	for _, c := range []struct {
		name, art, want string
		extra           []string
	}{
		{"unsigned", unsigned, "has no signature", nil},
		{"signed by a key the policy does not trust", wrong, "signature made by a different key", nil},
		{"changed after signing", altered, "signature verification failed", nil},
		{"signature elsewhere not given", elsewhere, "has no signature", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := kiln(t, flashArgs(c.art, c.extra...)...)
			if code != ExitUntrusted || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "hint: nothing was written") {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
			}
			if opens != 0 {
				t.Fatalf("the device was opened %d times", opens)
			}
		})
	}
	// $KILN_POLICY is the default.
	t.Setenv("KILN_POLICY", policy)
	if code, _, _ := kiln(t, "flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", "--log", log, unsigned); code != ExitUntrusted || opens != 0 {
		t.Fatalf("KILN_POLICY: exit %d, opens %d", code, opens)
	}
	if code, out, errOut := kiln(t, flashArgs(good)...); code != 0 || opens != 1 || !strings.Contains(out, "verified: sha256") {
		t.Fatalf("signed: exit %d, opens %d: %s %s", code, opens, out, errOut)
	}
	if code, _, errOut := kiln(t, flashArgs(elsewhere, "--sig", filepath.Join(dir, "elsewhere.sig"))...); code != 0 || opens != 2 {
		t.Fatalf("--sig: exit %d, opens %d: %s", code, opens, errOut)
	}
	// A board the policy does not cover needs no signature.
	t.Setenv("KILN_POLICY", "")

	// The log holds all seven attempts and verifies.
	f, _ := os.Open(log)
	es, err := auditlog.Read(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var results []string
	for _, e := range es {
		if e.Kind == auditlog.KindFlash {
			results = append(results, e.Result)
		}
	}
	if strings.Join(results, ",") != "untrusted,untrusted,untrusted,untrusted,untrusted,ok,ok" {
		t.Fatalf("logged results %v", results)
	}
	if code, out, errOut := kiln(t, "log", "verify", "--log", log); code != 0 || !strings.Contains(out, "7 records") {
		t.Fatalf("log verify: exit %d: %s %s", code, out, errOut)
	}
}

// TestUntrustedLeavesEmulatedDeviceUntouched runs the real `kiln emulate
// arduino-uno --state FILE` on a pty and flashes it through the pty: the
// refused artifacts leave the state file byte-identical; the signed one
// lands.
func TestUntrustedLeavesEmulatedDeviceUntouched(t *testing.T) {
	dir := t.TempDir()
	trusted, stranger, policy := policyFixture(t, dir)
	state := filepath.Join(dir, "uno.state")
	emu := startEmulate(t, "arduino-uno", state)
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	img := randomBytes(12, 2000)
	unsigned := writeHex(t, dir, "unsigned.hex", 0, img)
	wrong := writeHex(t, dir, "wrong.hex", 0, img)
	signFile(t, stranger, wrong, wrong+".minisig")
	for _, art := range []string{unsigned, wrong} {
		code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", emu.port, "--policy", policy, art)
		if code != ExitUntrusted {
			t.Fatalf("%s: exit %d: %s", art, code, errOut)
		}
	}
	after, _ := os.ReadFile(state)
	if !bytes.Equal(before, after) {
		t.Fatal("the emulated device's flash changed after refused artifacts")
	}
	good := writeHex(t, dir, "good.hex", 0, img)
	signFile(t, trusted, good, good+".minisig")
	if code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", emu.port, "--policy", policy, good); code != 0 {
		t.Fatalf("signed: exit %d: %s", code, errOut)
	}
	waitState(t, state, img)
	emu.stop(t)
}

// TestLogVerifyCLIDetectsTamper: kiln log verify fails on an edited log.
func TestLogVerifyCLIDetectsTamper(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	hex := writeHex(t, dir, "a.hex", 0, randomBytes(3, 200))
	for i := 0; i < 3; i++ {
		if code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", "--log", log, hex); code != 0 {
			t.Fatalf("flash: %d %s", code, errOut)
		}
	}
	code, out, _ := kiln(t, "log", "show", "--log", log, "--json")
	var shown struct{ Entries []auditlog.Entry }
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil || len(shown.Entries) != 6 || shown.Entries[0].Device == "" ||
		shown.Entries[0].ReadbackSHA256 != shown.Entries[0].ArtifactSHA256 {
		t.Fatalf("log show: exit %d: %s", code, out)
	}
	data, _ := os.ReadFile(log)
	edited := strings.Replace(string(data), `"result":"ok"`, `"result":"ok "`, 1)
	os.WriteFile(log, []byte(edited), 0o644)
	if code, _, errOut := kiln(t, "log", "verify", "--log", log); code != ExitFailure || !strings.Contains(errOut, "tampered") {
		t.Fatalf("edited log: exit %d: %s", code, errOut)
	}
	lines := strings.SplitAfter(string(data), "\n")
	os.WriteFile(log, []byte(strings.Join(lines[:len(lines)-2], "")), 0o644) // drop the last checkpoint
	if code, _, errOut := kiln(t, "log", "verify", "--log", log); code != ExitFailure || !strings.Contains(errOut, "head checkpoint") {
		t.Fatalf("cut log: exit %d: %s", code, errOut)
	}
}

// freshStore makes an empty store holding only the recipe's toolchain and
// inputs (fetched into the user's store, as kiln fetch does, and
// hard-linked in).
func freshStore(t *testing.T, recipe string) string {
	t.Helper()
	code, out, errOut := kiln(t, "fetch", recipe)
	if code != 0 {
		t.Fatalf("fetch: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	t.Cleanup(func() {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		src := f[len(f)-1]
		dst := filepath.Join(dir, filepath.Base(src))
		var dirs []string
		err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			to := filepath.Join(dst, rel)
			switch {
			case fi.IsDir():
				dirs = append(dirs, to)
				return os.MkdirAll(to, 0o755)
			case fi.Mode()&os.ModeSymlink != 0:
				l, err := os.Readlink(p)
				if err != nil {
					return err
				}
				return os.Symlink(l, to)
			default:
				return os.Link(p, to)
			}
		})
		if err != nil {
			t.Fatalf("link %s: %v", src, err)
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Chmod(dirs[i], 0o555) // store entries are read-only
		}
	}
	return dir
}

// checkEvidence: kiln build wrote an SBOM that the official CycloneDX 1.6
// schema accepts and a provenance envelope that go-securesystemslib
// verifies, both describing the build's manifest.
func checkEvidence(t *testing.T, out, keyFile string) {
	t.Helper()
	var m struct {
		Name       string
		Derivation string
		Outputs    map[string]struct{ SHA256 string }
	}
	mdata, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil || json.Unmarshal(mdata, &m) != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	sbom, err := os.ReadFile(filepath.Join(out, "sbom.cdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := attesttest.ValidateSBOM(sbom); err != nil {
		t.Fatalf("sbom.cdx.json: %#v", err)
	}
	for _, want := range []string{`"name": "blink-uno"`, "pkg:deb/debian/gcc-avr@1:5.4.0%2BAtmel3.6.2-3?arch=amd64",
		"pkg:deb/debian/arduino-core-avr@", m.Outputs["firmware.elf"].SHA256} {
		if !strings.Contains(string(sbom), want) {
			t.Errorf("sbom.cdx.json lacks %s", want)
		}
	}
	kdata, _ := os.ReadFile(keyFile)
	sk, err := trust.ParseSecretKey(kdata, nil)
	if err != nil {
		t.Fatal(err)
	}
	prov, err := os.ReadFile(filepath.Join(out, "provenance.json"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := attesttest.OpenEnvelope(prov, sk.Public())
	if err != nil {
		t.Fatalf("provenance.json: go-securesystemslib: %v", err)
	}
	var st struct {
		Subject []struct {
			Name   string
			Digest map[string]string
		}
		Predicate struct {
			BuildDefinition struct {
				InternalParameters struct{ Derivation string }
			}
			RunDetails struct {
				Metadata struct{ InvocationID, StartedOn, FinishedOn string }
			}
		}
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range st.Subject {
		got[s.Name] = s.Digest["sha256"]
	}
	for name, o := range m.Outputs {
		if got[name] != o.SHA256 {
			t.Errorf("provenance subject %s: %s, manifest %s", name, got[name], o.SHA256)
		}
	}
	// The provenance is about this invocation: its own id and times; the
	// derivation is an internal parameter.
	md := st.Predicate.RunDetails.Metadata
	if !strings.HasPrefix(md.InvocationID, "urn:uuid:") || md.StartedOn == "" || md.FinishedOn < md.StartedOn ||
		strings.HasPrefix(md.StartedOn, "1980") {
		t.Errorf("invocation %+v", md)
	}
	if st.Predicate.BuildDefinition.InternalParameters.Derivation != m.Derivation {
		t.Errorf("provenance derivation %q, manifest %s", st.Predicate.BuildDefinition.InternalParameters.Derivation, m.Derivation)
	}
}

// patchELFSection flips one byte inside a section of an ELF file.
func patchELFSection(t *testing.T, data []byte, name string) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(name)
	if s == nil || s.Size < 16 {
		t.Fatalf("no section %s", name)
	}
	out := append([]byte(nil), data...)
	out[s.Offset+s.Size/2] ^= 0x5a
	return out
}

// TestAuditBlinkUno: kiln build writes verifiable evidence; a fresh rebuild of blink-uno is identical to the
// shipped build; a patched ELF or HEX is reported with the changed section
// (exit 3); a device holding the build audits identical.
func TestAuditBlinkUno(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	out := filepath.Join(dir, "shipped")
	recipe := filepath.Join("..", "..", "recipes", "blink-uno")
	key := filepath.Join(dir, "kiln.key")
	t.Setenv("KILN_KEY", key)
	if code, _, errOut := kiln(t, "keygen"); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	// A store of our own (the fetched toolchain and input linked in), so
	// the shipped build and the audit's rebuild are made by this kiln.
	st := freshStore(t, recipe)
	if code, stdout, errOut := kiln(t, "build", recipe, "--out", out, "--store", st); code != 0 {
		t.Fatalf("build: exit %d: %s %s", code, stdout, errOut)
	}
	checkEvidence(t, out, key)

	// Sign the build output directory and flash it under a policy that
	// trusts the key: the directory's firmware.elf carries its signature.
	policy := filepath.Join(dir, "policy.toml")
	os.WriteFile(policy, []byte("[[key]]\nname = \"builder\"\nfile = \"kiln.pub\"\n\n[default]\nrequire_signature = true\n"), 0o644)
	if code, stdout, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", "--policy", policy, "--log", log, out); code != ExitUntrusted {
		t.Fatalf("unsigned build directory: exit %d: %s %s", code, stdout, errOut)
	}
	if code, stdout, errOut := kiln(t, "sign", out); code != 0 || !strings.Contains(stdout, "firmware.elf.minisig") || !strings.Contains(stdout, "manifest.json.minisig") {
		t.Fatalf("sign %s: exit %d: %s %s", out, code, stdout, errOut)
	}
	if code, stdout, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", "--policy", policy, "--log", log, out); code != 0 {
		t.Fatalf("signed build directory: exit %d: %s %s", code, stdout, errOut)
	}
	sigData, _ := os.ReadFile(filepath.Join(out, "firmware.elf.minisig"))
	if !strings.Contains(string(sigData), "\tderivation:") {
		t.Errorf("the build's signature lacks the derivation hash:\n%s", sigData)
	}
	code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--against", filepath.Join(out, "firmware.elf"), "--log", log)
	if code != 0 || !strings.Contains(stdout, "identical: every section matches") || !strings.Contains(stdout, "afresh: bit-identical to the store") {
		t.Fatalf("audit of the shipped ELF: exit %d: %s %s", code, stdout, errOut)
	}
	if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--against", filepath.Join(out, "firmware.hex"), "--log", log); code != 0 {
		t.Fatalf("audit of the shipped HEX: exit %d: %s %s", code, stdout, errOut)
	}

	elfData, _ := os.ReadFile(filepath.Join(out, "firmware.elf"))
	patched := filepath.Join(dir, "patched.elf")
	os.WriteFile(patched, patchELFSection(t, elfData, ".text"), 0o644)
	code, stdout, errOut = kiln(t, "audit", recipe, "--store", st, "--against", patched, "--log", log, "--json")
	if code != ExitVerify || !strings.Contains(errOut, "differs from the rebuild in .text") {
		t.Fatalf("patched ELF: exit %d: %s", code, errOut)
	}
	var rep auditReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if d := rep.Comparison.Differing(); rep.Identical || len(d) != 1 || d[0].Name != ".text" || d[0].Bytes != 1 {
		t.Fatalf("patched ELF report: %+v", rep.Comparison)
	}

	// A patched HEX: the difference is named by the rebuild's sections.
	img := patchELFSection(t, elfData, ".text")
	pf, _ := elf.NewFile(bytes.NewReader(img))
	var flat []byte
	for _, p := range pf.Progs {
		if p.Type == elf.PT_LOAD && p.Filesz > 0 {
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			flat = append(flat, b...)
		}
	}
	phex := writeHex(t, dir, "patched.hex", 0, flat)
	code, stdout, errOut = kiln(t, "audit", recipe, "--store", st, "--against", phex, "--log", log)
	if code != ExitVerify || !strings.Contains(stdout, ".text") || !strings.Contains(stdout, "1 byte differs") {
		t.Fatalf("patched HEX: exit %d: %s %s", code, stdout, errOut)
	}

	// A device: flash the shipped build into the real emulator process,
	// then audit what it holds.
	state := filepath.Join(dir, "uno.state")
	emu := startEmulate(t, "arduino-uno", state)
	if code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", emu.port, "--log", log, out); code != 0 {
		t.Fatalf("flash: exit %d: %s", code, errOut)
	}
	if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--port", emu.port, "--log", log); code != 0 || !strings.Contains(stdout, "identical") {
		t.Fatalf("audit --port: exit %d: %s %s", code, stdout, errOut)
	}
	// Extra code past the build: only a full read sees it.
	extra := writeHex(t, dir, "extra.hex", 0x6000, randomBytes(31, 128))
	if code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", emu.port, "--log", log, extra); code != 0 {
		t.Fatalf("flash extra: exit %d: %s", code, errOut)
	}
	if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--port", emu.port, "--log", log); code != 0 {
		t.Fatalf("audit --port (extent only): exit %d: %s %s", code, stdout, errOut)
	}
	if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--port", emu.port, "--full", "--log", log); code != ExitVerify ||
		!strings.Contains(stdout, "0x006000+128") || !strings.Contains(stdout, "outside every section") {
		t.Fatalf("audit --port --full: exit %d: %s %s", code, stdout, errOut)
	}
	if code, _, errOut := kiln(t, "flash", "--board", "arduino-uno", "--port", emu.port, "--log", log, phex); code != 0 {
		t.Fatalf("flash patched: exit %d: %s", code, errOut)
	}
	if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--port", emu.port, "--log", log); code != ExitVerify || !strings.Contains(stdout, ".text") {
		t.Fatalf("audit --port of a patched device: exit %d: %s %s", code, stdout, errOut)
	}
	emu.stop(t)

	// Every audit is in the log, with its result.
	f, _ := os.Open(log)
	es, _ := auditlog.Read(f)
	f.Close()
	var results []string
	for _, e := range es {
		if e.Kind == auditlog.KindAudit {
			results = append(results, e.Result)
		}
	}
	if strings.Join(results, ",") != "identical,identical,different,different,identical,identical,different,different" {
		t.Fatalf("audit records: %v", results)
	}
}

// TestSSHWritesCheckPolicyFirst: kiln update, kiln flash --port ssh:// and
// kiln fleet deploy refuse an unsigned image with exit 4 before they
// connect: the devices' address has nothing listening, so any attempt to
// reach it would fail differently (exit 1). A signed image gets past the
// policy and fails only at the connection.
func TestSSHWritesCheckPolicyFirst(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	trusted, img, cmds := sshWrites(t, dir, log, `groups = ["robots"]`+"\n"+`ports = ["ssh://*"]`, "--group", "robots")
	refusedUnsigned(t, cmds)
	signFile(t, trusted, img, img+".minisig")
	for name, args := range cmds {
		code, _, errOut := kiln(t, args...)
		if code == ExitUntrusted || code == 0 {
			t.Errorf("%s, signed: exit %d (want a connection failure): %s", name, code, errOut)
		}
	}
	f, _ := os.Open(log)
	es, _ := auditlog.Read(f)
	f.Close()
	untrustedN := 0
	for _, e := range es {
		if e.Result == "untrusted" {
			untrustedN++
		}
	}
	if untrustedN != 2 { // fleet deploy refuses before it has per-device records
		t.Errorf("%d untrusted records, want 2 (update, flash)", untrustedN)
	}
}

// TestAuditImagePerPartition: kiln image build writes verifiable evidence;
// kiln audit rebuilds an image recipe and
// names the partition a changed byte is in.
func TestAuditImagePerPartition(t *testing.T) {
	dir := t.TempDir()
	recipe := filepath.Join(dir, "tiny-image")
	os.MkdirAll(filepath.Join(recipe, "files"), 0o755)
	os.WriteFile(filepath.Join(recipe, "files", "hello.txt"), []byte("hello from kiln\n"), 0o644)
	os.WriteFile(filepath.Join(recipe, "recipe.toml"), []byte(`name = "tiny-image"
version = "1.0.0"
kind = "image"
board = "rpi-3b"
files = ["files/*"]

[image]
table = "mbr"
size = "4MiB"
source_date_epoch = 1751414400

[[image.partitions]]
name = "root"
fs = "squashfs"
size = "1MiB"
contents = [{ from = "src:files", to = "/" }]

[[image.partitions]]
name = "spare"
fs = "raw"
size = "1MiB"
`), 0o644)
	st := filepath.Join(dir, "store")
	shipped := filepath.Join(dir, "shipped")
	key := filepath.Join(dir, "kiln.key")
	t.Setenv("KILN_KEY", key)
	if code, _, errOut := kiln(t, "keygen"); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	code, stdout, errOut := kiln(t, "image", "build", recipe, "--out", shipped, "--store", st, "--json")
	var res recipebuild.Result
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil || res.Image == nil {
		t.Fatalf("image build: exit %d: %s %s", code, stdout, errOut)
	}
	// kiln image build wrote the evidence: a valid SBOM, a verifiable provenance.
	sbom, _ := os.ReadFile(filepath.Join(shipped, "sbom.cdx.json"))
	if err := attesttest.ValidateSBOM(sbom); err != nil {
		t.Fatalf("image sbom.cdx.json: %v", err)
	}
	kdata, _ := os.ReadFile(key)
	sk, _ := trust.ParseSecretKey(kdata, nil)
	prov, _ := os.ReadFile(filepath.Join(shipped, "provenance.json"))
	if _, err := attesttest.OpenEnvelope(prov, sk.Public()); err != nil {
		t.Fatalf("image provenance.json: %v", err)
	}
	log := filepath.Join(dir, "audit.jsonl")
	img := filepath.Join(shipped, image.ImageFile)
	for _, art := range []string{img, filepath.Join(shipped, image.XZFile)} {
		if code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--against", art, "--log", log); code != 0 || !strings.Contains(stdout, "identical: every partition") {
			t.Fatalf("audit %s: exit %d: %s %s", art, code, stdout, errOut)
		}
	}
	// An image shipped with one file changed: the partition and the file.
	tampered := filepath.Join(dir, "tampered")
	os.MkdirAll(filepath.Join(tampered, "files"), 0o755)
	rdata, _ := os.ReadFile(filepath.Join(recipe, "recipe.toml"))
	os.WriteFile(filepath.Join(tampered, "recipe.toml"), rdata, 0o644)
	os.WriteFile(filepath.Join(tampered, "files", "hello.txt"), []byte("hello from someone else\n"), 0o644)
	if code, stdout, errOut := kiln(t, "image", "build", tampered, "--out", filepath.Join(dir, "shipped2"), "--store", st); code != 0 {
		t.Fatalf("image build: exit %d: %s %s", code, stdout, errOut)
	}
	code, stdout, errOut = kiln(t, "audit", recipe, "--store", st, "--against", filepath.Join(dir, "shipped2", image.ImageFile), "--log", log)
	if code != ExitVerify || !strings.Contains(stdout, "partition 1 (root)") || !regexp.MustCompile(`different\s+/hello.txt`).MatchString(stdout) {
		t.Fatalf("image with a changed file: exit %d: %s %s", code, stdout, errOut)
	}

	// One changed byte in the raw partition (the changed file above covers
	// the filesystem one).
	data, _ := os.ReadFile(img)
	patchedN := 0
	for _, p := range res.Image.Partitions {
		if p.FS != "raw" {
			continue
		}
		patchedN++
		patched := append([]byte(nil), data...)
		patched[p.Start+p.Size/2] ^= 0x01
		pf := filepath.Join(dir, "patched.img")
		os.WriteFile(pf, patched, 0o644)
		code, stdout, errOut := kiln(t, "audit", recipe, "--store", st, "--against", pf, "--log", log)
		want := fmt.Sprintf("partition %d (%s)", p.Index, p.Name)
		if code != ExitVerify || !strings.Contains(stdout, want) || !strings.Contains(stdout, "1 byte differs") {
			t.Fatalf("patched %s: exit %d: %s %s", p.Name, code, stdout, errOut)
		}
	}
	if patchedN != 1 {
		t.Fatalf("%d raw partitions patched, want 1", patchedN)
	}
}

// An encrypted secret key signs with --password-file; without it, a hint.
func TestSignWithEncryptedKey(t *testing.T) {
	dir := t.TempDir()
	sk, _ := trust.GenerateKey(nil)
	enc, err := sk.EncodeEncrypted(nil, []byte("s3cret"), 1<<16, 1<<22) // small scrypt limits: a fast test
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "enc.key")
	os.WriteFile(key, enc, 0o600)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	file := writeHex(t, dir, "fw.hex", 0, randomBytes(9, 300))
	if code, _, errOut := kiln(t, "sign", "--key", key, file); code != ExitFailure || !strings.Contains(errOut, "hint: give the password with --password-file") {
		t.Fatalf("no password: exit %d: %s", code, errOut)
	}
	if code, _, errOut := kiln(t, "sign", "--key", key, "--password-file", pw, file); code != 0 {
		t.Fatalf("sign: exit %d: %s", code, errOut)
	}
	if code, out, errOut := kiln(t, "verify-sig", "-P", sk.Public().String(), file); code != 0 || !strings.Contains(out, "signature ok") {
		t.Fatalf("verify-sig: exit %d: %s %s", code, out, errOut)
	}
}

// TestSSHPolicyWithoutBoard: a policy that requires signatures for rpi-*
// boards cannot be side-stepped by leaving --board out: an image whose
// board kiln cannot establish counts as an rpi-* image (fail closed), on
// kiln update, kiln flash --port ssh:// and fleet deploy (exit 4, before
// any connection).
func TestSSHPolicyWithoutBoard(t *testing.T) {
	dir := t.TempDir()
	_, _, cmds := sshWrites(t, dir, filepath.Join(dir, "audit.jsonl"), `boards = ["rpi-*"]`)
	refusedUnsigned(t, cmds)
}

// sshWrites writes a policy with one signature rule (its selectors given),
// an unsigned image and a fleet file, and returns the trusted key, the
// image and the three commands that write it to a device over SSH (to an
// address where nothing listens), each with extra flags.
func sshWrites(t *testing.T, dir, log, selectors string, extra ...string) (*trust.SecretKey, string, map[string][]string) {
	t.Helper()
	trusted, _, _ := policyFixture(t, dir)
	policy := filepath.Join(dir, "ssh-policy.toml")
	os.WriteFile(policy, []byte("[[key]]\nname = \"release\"\npublic_key = \""+trusted.Public().String()+"\"\n\n"+
		"[[rule]]\n"+selectors+"\nrequire_signature = true\n"), 0o644)
	img := filepath.Join(dir, "robot.img")
	os.WriteFile(img, randomBytes(21, 64<<10), 0o644)
	port := "ssh://root@127.0.0.1:1/dev/mmcblk0"
	fleetFile := filepath.Join(dir, "fleet.toml")
	os.WriteFile(fleetFile, []byte("[[group]]\nname = \"robots\"\nimage = \"robot.img\"\n\n[[device]]\nname = \"arm-1\"\nurl = \""+port+"\"\ngroup = \"robots\"\n"), 0o644)
	with := func(args ...string) []string {
		return append(append(args[:len(args)-1:len(args)-1], extra...), args[len(args)-1])
	}
	return trusted, img, map[string][]string{
		"update":       with("update", "--port", port, "--policy", policy, "--log", log, img),
		"flash ssh":    with("flash", "--port", "SSH://root@127.0.0.1:1/dev/sdb", "--policy", policy, "--log", log, img),
		"fleet deploy": {"fleet", "deploy", "--policy", policy, "--log", log, fleetFile},
	}
}

// refusedUnsigned runs each command and requires the unsigned-artifact
// refusal (exit 4).
func refusedUnsigned(t *testing.T, cmds map[string][]string) {
	t.Helper()
	for name, args := range cmds {
		code, _, errOut := kiln(t, args...)
		if code != ExitUntrusted || !strings.Contains(errOut, "has no signature") {
			t.Errorf("%s, unsigned: exit %d: %s", name, code, errOut)
		}
	}
}

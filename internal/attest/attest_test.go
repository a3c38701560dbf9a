package attest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v5"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/attest/attesttest"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
	"kiln.dev/kiln/recipes"
)

// blinkSubject describes a blink-uno build from the real recipe and the
// real pinned toolchain closure.
func blinkSubject(t *testing.T) *Subject {
	t.Helper()
	r, err := recipes.Load("../../recipes/blink-uno")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := recipes.LoadToolchain(r.Toolchain)
	if err != nil {
		t.Fatal(err)
	}
	s := &Subject{
		Name: r.Name, Version: r.Version, Board: r.Board, Kind: "firmware",
		Derivation: strings.Repeat("ab", 32), BuilderVersion: "test",
		Toolchain: tc.Name, Recipe: r,
		Internal: map[string]any{"sandbox": true, "source_date_epoch": 1700000000},
		Time:     time.Unix(1700000000, 0),
		Outputs: []File{
			{Name: "firmware.elf", SHA256: strings.Repeat("01", 32), Size: 12000},
			{Name: "firmware.hex", SHA256: strings.Repeat("02", 32), Size: 2600},
			{Name: "firmware.bin", SHA256: strings.Repeat("03", 32), Size: 924},
		},
		Sources: []File{{Name: "src/blink.cpp", SHA256: strings.Repeat("04", 32)}},
	}
	for _, p := range tc.Packages {
		s.Packages = append(s.Packages, Package{Name: p.Name, SHA256: p.SHA256, Sources: p.Sources, Arch: "amd64", Linked: p.Linked})
	}
	for _, in := range r.Inputs {
		s.Inputs = append(s.Inputs, Package{Name: in.Name, SHA256: in.SHA256, Sources: in.Sources, Arch: "all"})
	}
	if len(s.Packages) < 3 || len(s.Inputs) == 0 {
		t.Fatalf("toolchain %d packages, %d inputs", len(s.Packages), len(s.Inputs))
	}
	return s
}

// cyclonedxSchema is the official CycloneDX 1.6 schema, compiled offline.
func cyclonedxSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	sch, err := attesttest.CycloneDX16()
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

func TestSBOMValidatesAgainstCycloneDX16Schema(t *testing.T) {
	sch := cyclonedxSchema(t)
	s := blinkSubject(t)
	data, err := SBOM(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(doc); err != nil {
		t.Fatalf("sbom.cdx.json is not valid CycloneDX 1.6: %#v", err)
	}
	// What the SBOM must say.
	var bom struct {
		SpecVersion string `json:"specVersion"`
		Metadata    struct {
			Component struct {
				Type, Name string
				Components []struct{ Name string }
			}
		}
		Components []struct {
			Name, Version, Purl string
			Hashes              []struct{ Alg, Content string }
		}
	}
	if err := json.Unmarshal(data, &bom); err != nil {
		t.Fatal(err)
	}
	if bom.SpecVersion != "1.6" || bom.Metadata.Component.Type != "firmware" || bom.Metadata.Component.Name != "blink-uno" ||
		len(bom.Metadata.Component.Components) != 3 {
		t.Fatalf("top component: %+v (spec %s)", bom.Metadata.Component, bom.SpecVersion)
	}
	purls := map[string]bool{}
	for _, c := range bom.Components {
		if len(c.Hashes) != 1 || c.Hashes[0].Alg != "SHA-256" || len(c.Hashes[0].Content) != 64 {
			t.Errorf("%s: hashes %+v", c.Name, c.Hashes)
		}
		purls[c.Purl] = true
	}
	for _, want := range []string{
		"pkg:deb/debian/gcc-avr@1:5.4.0%2BAtmel3.6.2-3?arch=amd64",
		"pkg:deb/debian/arduino-core-avr@1.8.7%2Bdfsg-1~deb12u1?arch=all",
	} {
		if !purls[want] {
			t.Errorf("no component with purl %s", want)
		}
	}
	// Deterministic: the same build gives the same bytes.
	again, _ := SBOM(blinkSubject(t))
	if !bytes.Equal(again, data) {
		t.Error("two SBOMs of one build differ")
	}

	// The validator is not a rubber stamp: a BOM the schema forbids fails.
	bad := strings.Replace(string(data), `"alg": "SHA-256"`, `"alg": "SHA-257"`, 1)
	var badDoc any
	json.Unmarshal([]byte(bad), &badDoc)
	if err := sch.Validate(badDoc); err == nil {
		t.Fatal("schema accepted an unknown hash algorithm")
	}
}

func sslibVerifier(t *testing.T, pk *trust.PublicKey) *signerverifier.ED25519SignerVerifier {
	t.Helper()
	sv, err := attesttest.SSLibVerifier(pk)
	if err != nil {
		t.Fatal(err)
	}
	return sv
}

// TestProvenanceVerifiesWithSecureSystemsLib checks kiln's DSSE envelope
// with go-securesystemslib's independent DSSE implementation, then reads
// the statement.
func TestProvenanceVerifiesWithSecureSystemsLib(t *testing.T) {
	key, _ := trust.GenerateKey(nil)
	s := blinkSubject(t)
	data, err := ProvenanceEnvelope(s, key)
	if err != nil {
		t.Fatal(err)
	}
	var env dsse.Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	ev, err := dsse.NewEnvelopeVerifier(sslibVerifier(t, key.Public()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	accepted, err := ev.Verify(ctx, &env)
	if err != nil || len(accepted) != 1 || accepted[0].KeyID != key.ID.String() {
		t.Fatalf("securesystemslib rejected kiln's envelope: %v %+v", err, accepted)
	}
	// kiln's own check agrees.
	var mine Envelope
	json.Unmarshal(data, &mine)
	if _, _, err := Open(&mine, key.Public()); err != nil {
		t.Fatal(err)
	}

	// The statement.
	payload, _ := env.DecodeB64Payload()
	var st struct {
		Type          string `json:"_type"`
		PredicateType string
		Subject       []ResourceRef
		Predicate     struct {
			BuildDefinition struct {
				BuildType            string
				ExternalParameters   map[string]json.RawMessage
				ResolvedDependencies []ResourceRef
			}
			RunDetails struct {
				Builder struct{ ID string }
			}
		}
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		t.Fatal(err)
	}
	if env.PayloadType != "application/vnd.in-toto+json" || st.Type != "https://in-toto.io/Statement/v1" ||
		st.PredicateType != "https://slsa.dev/provenance/v1" || st.Predicate.BuildDefinition.BuildType == "" ||
		st.Predicate.RunDetails.Builder.ID == "" {
		t.Fatalf("statement: %s", payload)
	}
	if len(st.Subject) != 3 || st.Subject[0].Name != "firmware.bin" || st.Subject[0].Digest["sha256"] != strings.Repeat("03", 32) {
		t.Fatalf("subjects %+v", st.Subject)
	}
	var recipe struct{ Name, Board, Toolchain string }
	json.Unmarshal(st.Predicate.BuildDefinition.ExternalParameters["recipe"], &recipe)
	if recipe.Name != "blink-uno" || recipe.Toolchain != "avr-gcc-5.4" {
		t.Fatalf("external parameters: %s", st.Predicate.BuildDefinition.ExternalParameters["recipe"])
	}
	deps := st.Predicate.BuildDefinition.ResolvedDependencies
	if len(deps) != len(s.Packages)+len(s.Inputs)+len(s.Sources) {
		t.Fatalf("%d resolved dependencies", len(deps))
	}
	for _, d := range deps {
		if len(d.Digest["sha256"]) != 64 {
			t.Errorf("%s has no sha256 digest", d.Name)
		}
	}

	t.Run("tampered payload", func(t *testing.T) {
		forged := env
		p := strings.Replace(string(payload), strings.Repeat("03", 32), strings.Repeat("0f", 32), 1)
		forged.Payload = base64.StdEncoding.EncodeToString([]byte(p))
		if _, err := ev.Verify(ctx, &forged); err == nil {
			t.Fatal("securesystemslib accepted a changed statement")
		}
		m := mine
		m.Payload = forged.Payload
		if _, _, err := Open(&m, key.Public()); !errors.Is(err, ErrBadEnvelope) {
			t.Fatalf("kiln accepted a changed statement: %v", err)
		}
	})
	t.Run("other key", func(t *testing.T) {
		other, _ := trust.GenerateKey(nil)
		ev2, _ := dsse.NewEnvelopeVerifier(sslibVerifier(t, other.Public()))
		if _, err := ev2.Verify(ctx, &env); err == nil {
			t.Fatal("securesystemslib accepted the envelope under another key")
		}
	})
}

func TestPAE(t *testing.T) {
	// The DSSE specification's example.
	got := string(PAE("http://example.com/HelloWorld", []byte("hello world")))
	want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
	if got != want {
		t.Fatalf("got %q", got)
	}
	if got, want := string(PAE("", nil)), "DSSEv1 0  0 "; got != want {
		t.Fatalf("empty: got %q", got)
	}
}

func TestPURL(t *testing.T) {
	cases := []struct {
		p    Package
		want string
	}{
		{Package{Name: "gcc-avr", Sources: []string{"deb:gcc-avr=1:5.4.0+Atmel3.6.2-3"}, Arch: "amd64"},
			"pkg:deb/debian/gcc-avr@1:5.4.0%2BAtmel3.6.2-3?arch=amd64"},
		{Package{Name: "x", Sources: []string{"https://example.com/x.tar.gz"}, SHA256: "ab"},
			"pkg:generic/x?checksum=sha256:ab&download_url=https%3A%2F%2Fexample.com%2Fx.tar.gz"},
		{Package{Name: "y", Sources: []string{"file:y.tar"}, SHA256: "cd"}, "pkg:generic/y?checksum=sha256:cd"},
	}
	for _, c := range cases {
		if got := c.p.PURL(); got != c.want {
			t.Errorf("%s: got %s, want %s", c.p.Name, got, c.want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	key, _ := trust.GenerateKey(nil)
	if err := WriteFiles(dir, blinkSubject(t), key); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{SBOMName, ProvenanceName} {
		if st, err := os.Stat(filepath.Join(dir, n)); err != nil || st.Size() == 0 {
			t.Fatalf("%s: %v", n, err)
		}
	}
}

// TestFromManifest describes a build from its manifest, with the Debian
// architectures from the host's apt cache, and the SBOM stays valid.
func TestFromManifest(t *testing.T) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		t.Skip("apt-cache: not a Debian host, so no architectures to look up")
	}
	m := &firmware.Manifest{
		Format: firmware.ManifestFormat, Builder: firmware.Builder, Name: "blink-uno", Version: "1.0.0",
		Board: "arduino-uno", Derivation: strings.Repeat("cd", 32), SourceDateEpoch: 1,
		Outputs:   map[string]firmware.Output{"firmware.hex": {SHA256: strings.Repeat("05", 32), Size: 10}},
		Toolchain: firmware.ToolchainRef{Name: "avr-gcc-5.4", Packages: []firmware.PackageRef{{Name: "gcc-avr", Source: "deb:gcc-avr=1:5.4.0+Atmel3.6.2-3", SHA256: strings.Repeat("06", 32)}}},
		Inputs:    []firmware.InputRef{{Name: "arduino-core-avr", SHA256: strings.Repeat("07", 32), Sources: []string{"deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1"}}},
		Sources:   []firmware.FileRef{{Path: "src/blink.cpp", SHA256: strings.Repeat("08", 32)}},
		HostImpurities: []firmware.Impurity{
			{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Target: "/host/libc.so.6", SHA256: strings.Repeat("09", 32)},
			// The loader is shown twice in the sandbox; the SBOM lists it once.
			{Path: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Target: "/host/ld-linux-x86-64.so.2", SHA256: strings.Repeat("0a", 32)},
			{Path: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Target: "/lib64/ld-linux-x86-64.so.2", SHA256: strings.Repeat("0a", 32)},
		},
	}
	s := FromManifest(m, nil, nil)
	if got := s.Packages[0].PURL(); got != "pkg:deb/debian/gcc-avr@1:5.4.0%2BAtmel3.6.2-3?arch=amd64" {
		t.Errorf("toolchain purl %s", got)
	}
	if got := s.Inputs[0].PURL(); got != "pkg:deb/debian/arduino-core-avr@1.8.7%2Bdfsg-1~deb12u1?arch=all" {
		t.Errorf("input purl %s", got)
	}
	data, err := SBOM(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	json.Unmarshal(data, &doc)
	if err := cyclonedxSchema(t).Validate(doc); err != nil {
		t.Fatalf("%#v", err)
	}
	if !strings.Contains(string(data), "libc.so.6") {
		t.Error("the host's C library is not in the SBOM")
	}
}

// TestImageEvidence builds a small image recipe and writes its evidence:
// the SBOM validates against CycloneDX 1.6 with the image as the top
// component, and go-securesystemslib verifies the provenance.
func TestImageEvidence(t *testing.T) {
	dir := t.TempDir()
	recipe := filepath.Join(dir, "tiny-image")
	os.MkdirAll(filepath.Join(recipe, "files"), 0o755)
	os.WriteFile(filepath.Join(recipe, "files", "motd"), []byte("built by kiln\n"), 0o644)
	os.WriteFile(filepath.Join(recipe, "recipe.toml"), []byte(`name = "tiny-image"
version = "2.0.0"
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
size = "2MiB"
contents = [{ from = "src:files", to = "/" }]
`), 0o644)
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	res, err := recipebuild.Build(context.Background(), recipe, out, recipebuild.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	r, err := recipes.Load(recipe)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := trust.GenerateKey(nil)
	if err := WriteImage(out, res, r, key); err != nil {
		t.Fatal(err)
	}
	sbom, _ := os.ReadFile(filepath.Join(out, SBOMName))
	if err := attesttest.ValidateSBOM(sbom); err != nil {
		t.Fatalf("%#v", err)
	}
	if !strings.Contains(string(sbom), `"type": "operating-system"`) || !strings.Contains(string(sbom), "files/motd") ||
		!strings.Contains(string(sbom), res.Outputs["image.img"].SHA256) {
		t.Errorf("the SBOM does not describe the image:\n%s", sbom)
	}
	prov, _ := os.ReadFile(filepath.Join(out, ProvenanceName))
	payload, err := attesttest.OpenEnvelope(prov, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(payload), `"name":"image.img"`) || !strings.Contains(string(payload), `"derivation":"`+res.Derivation+`"`) {
		t.Errorf("statement: %s", payload)
	}
}

// Code linked into the firmware (avr-libc, libgcc in gcc-avr) is
// "required", the rest of the toolchain "excluded"; a foreign-architecture
// package's purl names the package and its architecture; the tool entry
// names kiln's version and the builder digest.
func TestSBOMScopesAndForeignPURL(t *testing.T) {
	s := blinkSubject(t)
	s.BuilderDigest = strings.Repeat("cd", 32)
	sbom, err := SBOM(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Metadata struct {
			Tools struct {
				Components []struct {
					Name, Version string
					Properties    []struct{ Name, Value string }
				}
			}
		}
		Components []struct {
			Name, Scope string
		}
	}
	if err := json.Unmarshal(sbom, &doc); err != nil {
		t.Fatal(err)
	}
	scope := map[string]string{}
	for _, c := range doc.Components {
		scope[c.Name] = c.Scope
	}
	for name, want := range map[string]string{"avr-libc": "required", "gcc-avr": "required", "binutils-avr": "excluded",
		"libmpc3": "excluded", "arduino-core-avr": "required"} {
		if scope[name] != want {
			t.Errorf("%s: scope %q, want %q", name, scope[name], want)
		}
	}
	tools := doc.Metadata.Tools.Components
	if len(tools) != 1 || tools[0].Name != "kiln" || tools[0].Version == "" || !strings.Contains(string(sbom), s.BuilderDigest) {
		t.Errorf("tool entry: %+v", tools)
	}
	p := Package{Name: "kernel", Sources: []string{"deb:linux-image-6.1.0-50-arm64:arm64=6.1.176-1"}, Arch: "amd64"}
	if got, want := p.PURL(), "pkg:deb/debian/linux-image-6.1.0-50-arm64@6.1.176-1?arch=arm64"; got != want {
		t.Errorf("purl %s, want %s", got, want)
	}
}

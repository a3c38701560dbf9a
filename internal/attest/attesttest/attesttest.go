// Package attesttest checks kiln's evidence files with independent tools in
// tests: the official CycloneDX 1.6 JSON schema (the copy shipped in the
// cyclonedx-go module source, compiled offline) and go-securesystemslib's
// DSSE verifier.
package attesttest

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/santhosh-tekuri/jsonschema/v5"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"

	"kiln.dev/kiln/internal/trust"
)

// CycloneDX16 compiles the official CycloneDX 1.6 JSON schema (with the
// SPDX licence list and JSF schemas it refers to) from the cyclonedx-go
// module in the module cache. Nothing is fetched: the compiler has no
// network loader, and every $ref resolves to a file added here.
func CycloneDX16() (*jsonschema.Schema, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("attesttest: the go command is not on PATH: %w", err)
	}
	out, err := exec.Command(gobin, "list", "-m", "-json", "github.com/CycloneDX/cyclonedx-go").Output()
	if err != nil {
		return nil, fmt.Errorf("attesttest: go list -m: %w", err)
	}
	var mod struct{ Dir, Version string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return nil, fmt.Errorf("attesttest: go list -m: no module directory (%v)", err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft7
	for url, file := range map[string]string{
		"http://cyclonedx.org/schema/bom-1.6.schema.json": "bom-1.6.schema.json",
		"http://cyclonedx.org/schema/spdx.schema.json":    "spdx.schema.json",
		// Shipped as "jsf-0.82.schemax.json"; its $id is the name bom-1.6
		// refers to.
		"http://cyclonedx.org/schema/jsf-0.82.schema.json": "jsf-0.82.schemax.json",
	} {
		f, err := os.Open(filepath.Join(mod.Dir, "schema", file))
		if err != nil {
			return nil, fmt.Errorf("attesttest: cyclonedx-go %s does not ship %s: %w", mod.Version, file, err)
		}
		err = c.AddResource(url, f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return c.Compile("http://cyclonedx.org/schema/bom-1.6.schema.json")
}

// ValidateSBOM checks a CycloneDX JSON document against the 1.6 schema.
func ValidateSBOM(data []byte) error {
	sch, err := CycloneDX16()
	if err != nil {
		return err
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return err
	}
	return sch.Validate(doc)
}

// SSLibVerifier is go-securesystemslib's Ed25519 verifier for a minisign
// public key (keyid: the minisign key ID).
func SSLibVerifier(pk *trust.PublicKey) (*signerverifier.ED25519SignerVerifier, error) {
	return signerverifier.NewED25519SignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyID: pk.ID.String(), KeyType: signerverifier.ED25519KeyType, Scheme: "ed25519",
		KeyVal: signerverifier.KeyVal{Public: hex.EncodeToString(pk.Key)},
	})
}

// OpenEnvelope verifies a DSSE envelope (provenance.json) with
// go-securesystemslib and returns its payload.
func OpenEnvelope(data []byte, pk *trust.PublicKey) ([]byte, error) {
	var env dsse.Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, err
	}
	sv, err := SSLibVerifier(pk)
	if err != nil {
		return nil, err
	}
	ev, err := dsse.NewEnvelopeVerifier(sv)
	if err != nil {
		return nil, err
	}
	if _, err := ev.Verify(context.Background(), &env); err != nil {
		return nil, err
	}
	return env.DecodeB64Payload()
}

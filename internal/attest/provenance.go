package attest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"kiln.dev/kiln"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// In-toto, SLSA and DSSE identifiers.
const (
	StatementType  = "https://in-toto.io/Statement/v1"
	PredicateSLSA  = "https://slsa.dev/provenance/v1"
	PayloadType    = "application/vnd.in-toto+json"
	BuildType      = "https://kiln.dev/buildtypes/derivation/v1"
	DefaultBuilder = "https://kiln.dev/builder/local"
)

// ErrBadEnvelope means a DSSE envelope is malformed or its signature does
// not verify.
var ErrBadEnvelope = errors.New("bad DSSE envelope")

// Statement is an in-toto Statement v1.
type Statement struct {
	Type          string          `json:"_type"`
	Subject       []ResourceRef   `json:"subject"`
	PredicateType string          `json:"predicateType"`
	Predicate     json.RawMessage `json:"predicate"`
}

// ResourceRef is in-toto's ResourceDescriptor, the fields kiln uses.
type ResourceRef struct {
	Name   string            `json:"name,omitempty"`
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest"`
}

// Provenance is the SLSA provenance v1 predicate.
type Provenance struct {
	BuildDefinition struct {
		BuildType            string         `json:"buildType"`
		ExternalParameters   map[string]any `json:"externalParameters"`
		InternalParameters   map[string]any `json:"internalParameters,omitempty"`
		ResolvedDependencies []ResourceRef  `json:"resolvedDependencies,omitempty"`
	} `json:"buildDefinition"`
	RunDetails struct {
		Builder struct {
			ID      string            `json:"id"`
			Version map[string]string `json:"version,omitempty"`
		} `json:"builder"`
		Metadata struct {
			InvocationID string `json:"invocationId,omitempty"`
			StartedOn    string `json:"startedOn,omitempty"`
			FinishedOn   string `json:"finishedOn,omitempty"`
		} `json:"metadata"`
	} `json:"runDetails"`
}

// Envelope is a DSSE envelope.
type Envelope struct {
	PayloadType string         `json:"payloadType"`
	Payload     string         `json:"payload"`
	Signatures  []EnvelopeSign `json:"signatures"`
}

// EnvelopeSign is one signature in an Envelope.
type EnvelopeSign struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// PAE is DSSE's pre-authentication encoding:
// "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
func PAE(payloadType string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteByte(' ')
	b.Write(body)
	return b.Bytes()
}

// NewStatement returns the in-toto statement for s.
func NewStatement(s *Subject) (*Statement, error) {
	if len(s.Outputs) == 0 {
		return nil, fmt.Errorf("attest: provenance: no outputs to attest")
	}
	var p Provenance
	p.BuildDefinition.BuildType = BuildType
	p.BuildDefinition.ExternalParameters = map[string]any{
		"recipe": s.Recipe,
		"board":  s.Board,
	}
	internal := map[string]any{"derivation": s.Derivation}
	for k, v := range s.Internal {
		internal[k] = v
	}
	p.BuildDefinition.InternalParameters = internal
	for _, pk := range s.Packages {
		p.BuildDefinition.ResolvedDependencies = append(p.BuildDefinition.ResolvedDependencies,
			ResourceRef{Name: "toolchain/" + pk.Name, URI: pk.PURL(), Digest: map[string]string{"sha256": pk.SHA256}})
	}
	for _, in := range s.Inputs {
		p.BuildDefinition.ResolvedDependencies = append(p.BuildDefinition.ResolvedDependencies,
			ResourceRef{Name: "input/" + in.Name, URI: in.PURL(), Digest: map[string]string{"sha256": in.SHA256}})
	}
	for _, f := range sortedFiles(s.Sources) {
		p.BuildDefinition.ResolvedDependencies = append(p.BuildDefinition.ResolvedDependencies,
			ResourceRef{Name: "source/" + f.Name, Digest: map[string]string{"sha256": f.SHA256}})
	}
	p.RunDetails.Builder.ID = s.BuilderID
	if p.RunDetails.Builder.ID == "" {
		p.RunDetails.Builder.ID = DefaultBuilder
	}
	info := kiln.Info()
	p.RunDetails.Builder.Version = map[string]string{"kiln": info.Version}
	for k, v := range map[string]string{"builder": s.BuilderVersion, "builderDigest": s.BuilderDigest, "revision": revision(info)} {
		if v != "" {
			p.RunDetails.Builder.Version[k] = v
		}
	}
	// The provenance is about this invocation: its own id and times (the
	// manifest and the SBOM carry none, so they stay reproducible).
	p.RunDetails.Metadata.InvocationID = s.InvocationID
	if p.RunDetails.Metadata.InvocationID == "" {
		p.RunDetails.Metadata.InvocationID = newInvocationID()
	}
	started, finished := s.Started, s.Finished
	if finished.IsZero() {
		finished = time.Now()
	}
	if started.IsZero() {
		started = finished
	}
	p.RunDetails.Metadata.StartedOn = started.UTC().Format(time.RFC3339Nano)
	p.RunDetails.Metadata.FinishedOn = finished.UTC().Format(time.RFC3339Nano)
	pred, err := json.Marshal(&p)
	if err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	st := &Statement{Type: StatementType, PredicateType: PredicateSLSA, Predicate: pred}
	for _, o := range sortedFiles(s.Outputs) {
		st.Subject = append(st.Subject, ResourceRef{Name: o.Name, Digest: map[string]string{"sha256": o.SHA256}})
	}
	return st, nil
}

// Sign wraps payload in a DSSE envelope signed by key (Ed25519 over the
// PAE); the signature's keyid is the minisign key ID.
func Sign(payloadType string, payload []byte, key *trust.SecretKey) *Envelope {
	return &Envelope{
		PayloadType: payloadType,
		Payload:     base64.StdEncoding.EncodeToString(payload),
		Signatures: []EnvelopeSign{{
			KeyID: key.ID.String(),
			Sig:   base64.StdEncoding.EncodeToString(ed25519.Sign(key.Key, PAE(payloadType, payload))),
		}},
	}
}

// Open checks that env carries a valid signature by one of keys and
// returns its payload.
func Open(env *Envelope, keys ...*trust.PublicKey) ([]byte, *trust.PublicKey, error) {
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: %w: payload: %v", ErrBadEnvelope, err)
	}
	pae := PAE(env.PayloadType, payload)
	for _, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if (s.KeyID == "" || s.KeyID == k.ID.String()) && ed25519.Verify(k.Key, pae, sig) {
				return payload, k, nil
			}
		}
	}
	return nil, nil, fmt.Errorf("attest: %w: no signature by a trusted key", ErrBadEnvelope)
}

// ProvenanceEnvelope returns provenance.json for s: the statement in a DSSE
// envelope signed by key.
func ProvenanceEnvelope(s *Subject, key *trust.SecretKey) ([]byte, error) {
	if key == nil {
		return nil, fmt.Errorf("attest: provenance: no signing key")
	}
	st, err := NewStatement(s)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	out, err := json.MarshalIndent(Sign(PayloadType, payload, key), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("attest: provenance: %w", err)
	}
	return append(out, '\n'), nil
}

// WriteFiles writes sbom.cdx.json and, when key is not nil,
// provenance.json into dir, through store.Publish (never writing through a
// name already in dir).
func WriteFiles(dir string, s *Subject, key *trust.SecretKey) error {
	sbom, err := SBOM(s)
	if err != nil {
		return err
	}
	files := []store.File{{Name: SBOMName, Data: sbom}}
	if key != nil {
		prov, err := ProvenanceEnvelope(s, key)
		if err != nil {
			return err
		}
		files = append(files, store.File{Name: ProvenanceName, Data: prov})
	}
	if err := store.Publish(dir, files); err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	return nil
}

// newInvocationID is a random RFC 4122 version 4 UUID URN.
func newInvocationID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

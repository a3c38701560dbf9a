package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// Errors a record can be refused with. Test them with errors.Is.
var (
	// ErrUnsigned means a record carries no signature from an accepted key
	// (unknown signer, bad signature, or no key accepted at all).
	ErrUnsigned = errors.New("record not signed by an accepted key")
	// ErrBadRecord means a record is malformed or is not for the entry
	// asked for.
	ErrBadRecord = errors.New("bad cache record")
	// ErrContent means downloaded content disagrees with its signed record:
	// a wrong or short object, or a file whose hash, size, mode or type
	// differs.
	ErrContent = errors.New("cache content does not match its record")
)

// RecordFormat is the version of the record layout.
const RecordFormat = 1

// Compression is how content objects are compressed.
const Compression = "zstd"

var (
	keyRE = regexp.MustCompile(`^[0-9a-f]{32,128}$`)
	shaRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Record is the signed index record of one store entry.
type Record struct {
	Format int    `json:"format"`
	Key    string `json:"key"`  // the store key: derivation, toolchain or input hash
	Name   string `json:"name"` // the entry's name
	// Content is the archive object holding the entry.
	Content Content `json:"content"`
	// Files are the entry's files as its store manifest lists them.
	Files []store.FileRecord `json:"files"`
	// Signer is the minisign key ID of the key that signed the record.
	Signer string `json:"signer"`
}

// Content names the compressed archive of an entry.
type Content struct {
	SHA256      string `json:"sha256"`
	Size        int64  `json:"size"`
	Compression string `json:"compression"`
}

// Object is the content object's name in the cache.
func (c Content) Object() string { return ContentObject(c.SHA256) }

// ContentObject is the name of the content object with the given sha256.
func ContentObject(sha string) string { return "content/" + sha + ".tar.zst" }

// RecordObject is the name of the record of a store key.
func RecordObject(key string) string { return "records/" + key + ".json" }

// envelope is a record object: the record's exact bytes and a minisign
// signature over them.
type envelope struct {
	Record    string `json:"record"`
	Signature string `json:"signature"`
}

// trustedComment binds the signature to the key and the content as well as
// to the body.
func trustedComment(r *Record) string {
	return fmt.Sprintf("kiln-cache-record key:%s content:%s", r.Key, r.Content.SHA256)
}

// Seal signs r with sk and returns the record object's bytes. Sealing the
// same record with the same key gives the same bytes (Ed25519 is
// deterministic).
func Seal(r *Record, sk *trust.SecretKey) ([]byte, error) {
	r.Format = RecordFormat
	r.Signer = sk.ID.String()
	if err := r.check(); err != nil {
		return nil, err
	}
	body, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return nil, fmt.Errorf("cache: record: %w", err)
	}
	sig, err := trust.Sign(sk, bytes.NewReader(body), trustedComment(r))
	if err != nil {
		return nil, fmt.Errorf("cache: sign record: %w", err)
	}
	sig.UntrustedComment = "kiln cache record " + r.Key
	out, err := json.MarshalIndent(envelope{Record: string(body), Signature: string(sig.Encode())}, "", " ")
	if err != nil {
		return nil, fmt.Errorf("cache: record: %w", err)
	}
	return append(out, '\n'), nil
}

// Open parses a record object and checks its signature against the accepted
// keys. It returns the record and the key that signed it. A record that is
// not signed by one of keys wraps ErrUnsigned; a malformed one ErrBadRecord.
func OpenRecord(data []byte, keys []*trust.PublicKey) (*Record, *trust.PublicKey, error) {
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	sig, err := trust.ParseSignature([]byte(env.Signature))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrUnsigned, err)
	}
	var pk *trust.PublicKey
	for _, k := range keys {
		if k.ID == sig.KeyID {
			pk = k
		}
	}
	if pk == nil {
		ids := make([]string, len(keys))
		for i, k := range keys {
			ids[i] = k.ID.String()
		}
		if len(ids) == 0 {
			return nil, nil, fmt.Errorf("%w: signed by key %s, and no key is accepted", ErrUnsigned, sig.KeyID)
		}
		return nil, nil, fmt.Errorf("%w: signed by key %s, accepted %s", ErrUnsigned, sig.KeyID, strings.Join(ids, ", "))
	}
	if err := trust.Verify(pk, strings.NewReader(env.Record), sig); err != nil {
		return nil, nil, fmt.Errorf("%w: key %s: %v", ErrUnsigned, pk.ID, err)
	}
	var r Record
	dec = json.NewDecoder(strings.NewReader(env.Record))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if err := r.check(); err != nil {
		return nil, nil, err
	}
	if sig.TrustedComment != trustedComment(&r) || r.Signer != pk.ID.String() {
		return nil, nil, fmt.Errorf("%w: trusted comment %q does not match the record", ErrBadRecord, sig.TrustedComment)
	}
	return &r, pk, nil
}

// parseUnverified reads a record object's record without checking its
// signature: only for deciding whether a push has work to do, never for
// using the content.
func parseUnverified(data []byte) (*Record, error) {
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	var r Record
	if err := json.Unmarshal([]byte(env.Record), &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	return &r, r.check()
}

// signerOf returns the key ID a record object says it is signed by ("" if
// it cannot be read), without checking the signature.
func signerOf(data []byte) string {
	var env envelope
	if json.Unmarshal(data, &env) != nil {
		return ""
	}
	sig, err := trust.ParseSignature([]byte(env.Signature))
	if err != nil {
		return ""
	}
	return sig.KeyID.String()
}

// check validates a record's fields (not its signature).
func (r *Record) check() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadRecord, fmt.Sprintf(f, a...))
	}
	switch {
	case r.Format != RecordFormat:
		return bad("format %d, want %d", r.Format, RecordFormat)
	case !keyRE.MatchString(r.Key):
		return bad("key %q is not a hex hash", r.Key)
	case !entryNameRE.MatchString(r.Name):
		return bad("entry name %q", r.Name)
	case !shaRE.MatchString(r.Content.SHA256):
		return bad("content sha256 %q", r.Content.SHA256)
	case r.Content.Size <= 0:
		return bad("content size %d", r.Content.Size)
	case r.Content.Compression != Compression:
		return bad("compression %q, want %q", r.Content.Compression, Compression)
	}
	seen := map[string]bool{}
	for _, f := range r.Files {
		if err := checkRelPath(f.Path); err != nil {
			return bad("file %q: %v", f.Path, err)
		}
		if seen[f.Path] {
			return bad("file %q listed twice", f.Path)
		}
		seen[f.Path] = true
		switch f.Type {
		case "file":
			if !shaRE.MatchString(f.SHA256) || f.Size < 0 {
				return bad("file %q: sha256 %q size %d", f.Path, f.SHA256, f.Size)
			}
		case "dir", "symlink":
		default:
			return bad("file %q: type %q", f.Path, f.Type)
		}
	}
	return nil
}

var entryNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

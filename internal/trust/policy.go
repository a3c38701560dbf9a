package trust

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// ErrUntrusted means the policy forbids writing the artifact: it needs a
// signature and has none, or its signature is not from a trusted key or does
// not match. The CLI maps it to exit code 4.
var ErrUntrusted = errors.New("untrusted artifact")

// Policy says which keys are trusted and where a signature is required.
//
//	[[key]]
//	name = "release"
//	public_key = "RWQ…"           # minisign's base64 line, or
//	file = "keys/release.pub"     # a public key file, relative to the policy
//
//	[default]
//	require_signature = false
//
//	[[rule]]                      # every selector given must match (globs)
//	boards = ["arduino-*"]
//	groups = ["line-a"]
//	ports  = ["/dev/ttyUSB*", "emu:*"]
//	require_signature = true
//	keys = ["release"]            # accepted keys (default: every key)
//
//	[[cache]]                     # a binary cache builds substitute from
//	url = "s3://bucket/kiln?endpoint=https://s3.example.org"
//	keys = ["ci"]                 # keys whose records it accepts (default: every key)
type Policy struct {
	Keys    []PolicyKey `toml:"key"`
	Caches  []Cache     `toml:"cache"`
	Default struct {
		RequireSignature bool `toml:"require_signature"`
	} `toml:"default"`
	Rules []Rule `toml:"rule"`

	// Source is the file the policy came from.
	Source string `toml:"-"`
	keys   map[string]*PublicKey
}

// PolicyKey is one trusted public key.
type PolicyKey struct {
	Name      string `toml:"name"`
	PublicKey string `toml:"public_key"`
	File      string `toml:"file"`
}

// Cache is a binary cache (internal/cache) and the keys whose signed
// records are accepted from it, in the order builds ask them.
type Cache struct {
	URL  string   `toml:"url"`
	Keys []string `toml:"keys"`
}

// Rule selects devices by board, group and port (globs: * is any run of
// characters, slashes included, ? any one; an empty list matches anything) and says whether they need signed artifacts.
type Rule struct {
	Boards           []string `toml:"boards"`
	Groups           []string `toml:"groups"`
	Ports            []string `toml:"ports"`
	RequireSignature bool     `toml:"require_signature"`
	Keys             []string `toml:"keys"`
}

// LoadPolicy reads and validates a policy file.
func LoadPolicy(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("trust: policy: %w", err)
	}
	return ParsePolicy(data, file)
}

// ParsePolicy parses a policy; key files are resolved relative to the
// directory of source.
func ParsePolicy(data []byte, source string) (*Policy, error) {
	p := &Policy{Source: source, keys: map[string]*PublicKey{}}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(p)
	if err != nil {
		return nil, fmt.Errorf("trust: policy %s: %w", source, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		return nil, fmt.Errorf("trust: policy %s: unknown field %q", source, u[0].String())
	}
	for i, k := range p.Keys {
		if k.Name == "" {
			return nil, fmt.Errorf("trust: policy %s: key %d has no name", source, i+1)
		}
		if _, dup := p.keys[k.Name]; dup {
			return nil, fmt.Errorf("trust: policy %s: key %q named twice", source, k.Name)
		}
		var raw []byte
		switch {
		case k.PublicKey != "" && k.File != "":
			return nil, fmt.Errorf("trust: policy %s: key %q: give public_key or file, not both", source, k.Name)
		case k.PublicKey != "":
			raw = []byte(k.PublicKey)
		case k.File != "":
			f := k.File
			if !filepath.IsAbs(f) {
				f = filepath.Join(filepath.Dir(source), f)
			}
			if raw, err = os.ReadFile(f); err != nil {
				return nil, fmt.Errorf("trust: policy %s: key %q: %w", source, k.Name, err)
			}
		default:
			return nil, fmt.Errorf("trust: policy %s: key %q: no public_key or file", source, k.Name)
		}
		pk, err := ParsePublicKey(raw)
		if err != nil {
			return nil, fmt.Errorf("trust: policy %s: key %q: %w", source, k.Name, err)
		}
		p.keys[k.Name] = pk
	}
	for i, r := range p.Rules {
		for _, n := range r.Keys {
			if p.keys[n] == nil {
				return nil, fmt.Errorf("trust: policy %s: rule %d: unknown key %q", source, i+1, n)
			}
		}
		for _, g := range append(append(append([]string(nil), r.Boards...), r.Groups...), r.Ports...) {
			if g == "" {
				return nil, fmt.Errorf("trust: policy %s: rule %d: empty pattern", source, i+1)
			}
		}
	}
	for i, c := range p.Caches {
		if c.URL == "" {
			return nil, fmt.Errorf("trust: policy %s: cache %d has no url", source, i+1)
		}
		for _, n := range c.Keys {
			if p.keys[n] == nil {
				return nil, fmt.Errorf("trust: policy %s: cache %s: unknown key %q", source, c.URL, n)
			}
		}
	}
	if (p.Default.RequireSignature || anyRequires(p.Rules)) && len(p.keys) == 0 {
		return nil, fmt.Errorf("trust: policy %s: signatures are required but no key is trusted", source)
	}
	return p, nil
}

func anyRequires(rs []Rule) bool {
	for _, r := range rs {
		if r.RequireSignature {
			return true
		}
	}
	return false
}

// Target is where an artifact is about to go.
type Target struct {
	Board string
	Group string
	Port  string
}

func (t Target) String() string {
	s := t.Board
	if s == "" {
		s = "a board kiln cannot establish (every board rule applies)"
	}
	if t.Group != "" {
		s += " (group " + t.Group + ")"
	}
	if t.Port != "" {
		s += " on " + t.Port
	}
	return s
}

func matchAny(pats []string, s string) bool {
	if len(pats) == 0 {
		return true
	}
	for _, p := range pats {
		if glob(p, s) {
			return true
		}
	}
	return false
}

// glob matches s against a pattern where * is any run of characters
// (slashes too: "ssh://*" and "/dev/ttyUSB*" both work) and ? is any one.
func glob(pat, s string) bool {
	px, sx := 0, 0
	star, mark := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pat) && (pat[px] == '?' || pat[px] == s[sx]):
			px++
			sx++
		case px < len(pat) && pat[px] == '*':
			star, mark = px, sx
			px++
		case star >= 0:
			px = star + 1
			mark++
			sx = mark
		default:
			return false
		}
	}
	for px < len(pat) && pat[px] == '*' {
		px++
	}
	return px == len(pat)
}

// matches reports whether the rule selects t. A board that is not known
// (empty: neither the artifact nor the caller could establish it) matches
// every board pattern: where the policy cannot tell what is about to be
// written, it assumes the strictest (fail closed). A group is the
// operator's to state: without one, only rules that name no group apply.
// Ports match in canonical form (see CanonicalPorts).
func (r Rule) matches(t Target) bool {
	return matchUnknown(r.Boards, t.Board) && matchAny(r.Groups, t.Group) && matchPort(r.Ports, t.Port)
}

func matchUnknown(pats []string, s string) bool {
	return s == "" || matchAny(pats, s)
}

func matchPort(pats []string, port string) bool {
	if len(pats) == 0 {
		return true
	}
	for _, form := range CanonicalPorts(port) {
		for _, p := range pats {
			if glob(canonicalPort(p), form) {
				return true
			}
		}
	}
	return false
}

// CanonicalPorts returns the forms a port is matched in: URL-like specs
// with scheme and host lower-cased (SSH://Pi@HOST/dev/x is
// ssh://Pi@host/dev/x, user and path keep their case); a device path
// cleaned, and also the file it links to (/dev/serial/by-id/... is its
// /dev/ttyUSBn too). A rule selects the port if it matches any form.
func CanonicalPorts(port string) []string {
	c := canonicalPort(port)
	forms := []string{c}
	if strings.HasPrefix(c, "/") {
		// Follow the links by hand: the node they end at need not exist
		// (yet) for the name to count.
		p := c
		for range 40 {
			t, err := os.Readlink(p)
			if err != nil {
				break
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(p), t)
			}
			p = filepath.Clean(t)
			forms = append(forms, p)
		}
	}
	return forms
}

func canonicalPort(port string) string {
	if scheme, rest, ok := strings.Cut(port, "://"); ok {
		auth, path, _ := strings.Cut(rest, "/")
		user, host, hasUser := strings.Cut(auth, "@")
		if !hasUser {
			user, host = "", auth
		}
		out := strings.ToLower(scheme) + "://"
		if hasUser {
			out += user + "@"
		}
		out += strings.ToLower(host)
		if path != "" || strings.Contains(rest, "/") {
			out += "/" + path
		}
		return out
	}
	if scheme, rest, ok := strings.Cut(port, ":"); ok && !strings.Contains(scheme, "/") && scheme != "" {
		return strings.ToLower(scheme) + ":" + rest // emu:, dfu:, usb:
	}
	if strings.HasPrefix(port, "/") {
		return filepath.Clean(port)
	}
	return port
}

// Requirement is what the policy asks of an artifact for a target.
type Requirement struct {
	Signed bool
	// Keys are the accepted keys' names (sorted as in the policy).
	Keys []string
}

// For returns what the policy requires for t. When several matching rules
// require a signature, a key must be accepted by all of them.
func (p *Policy) For(t Target) Requirement {
	req := Requirement{Signed: p.Default.RequireSignature}
	accepted := map[string]bool{}
	for _, k := range p.Keys {
		accepted[k.Name] = true
	}
	for _, r := range p.Rules {
		if !r.matches(t) || !r.RequireSignature {
			continue
		}
		req.Signed = true
		if len(r.Keys) == 0 {
			continue
		}
		allow := map[string]bool{}
		for _, n := range r.Keys {
			allow[n] = true
		}
		for n := range accepted {
			if !allow[n] {
				delete(accepted, n)
			}
		}
	}
	for _, k := range p.Keys {
		if accepted[k.Name] {
			req.Keys = append(req.Keys, k.Name)
		}
	}
	return req
}

// Decision is the outcome of a successful Check.
type Decision struct {
	Required bool      `json:"required"`
	Signed   bool      `json:"signed"`
	KeyName  string    `json:"key,omitempty"`
	KeyID    string    `json:"key_id,omitempty"`
	Claims   *Claims   `json:"claims,omitempty"`
	Verified *Verified `json:"-"`
}

// Check decides whether artifact (the bytes about to be written, read from
// r) may go to t. sig is the content of its .minisig file, or nil when there
// is none. A signature that is present is always checked: a bad one is
// refused even where none is required. Refusals wrap ErrUntrusted.
func (p *Policy) Check(t Target, name string, r io.Reader, sig []byte) (*Decision, error) {
	req := p.For(t)
	d := &Decision{Required: req.Signed}
	if sig == nil {
		if req.Signed {
			return nil, fmt.Errorf("%w: policy %s requires a signed artifact for %s, and %s has no signature", ErrUntrusted, p.Source, t, name)
		}
		return d, nil
	}
	s, err := ParseSignature(sig)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUntrusted, name, err)
	}
	names := req.Keys
	if !req.Signed {
		names = nil
		for _, k := range p.Keys {
			names = append(names, k.Name)
		}
	}
	if len(names) == 0 {
		if req.Signed {
			return nil, fmt.Errorf("%w: policy %s: no key is accepted by every rule for %s", ErrUntrusted, p.Source, t)
		}
		return d, nil // nothing to check the signature against
	}
	keys := make([]*PublicKey, len(names))
	for i, n := range names {
		keys[i] = p.keys[n]
	}
	v, err := VerifyArtifact(keys, r, s)
	if err != nil {
		return nil, fmt.Errorf("%w: %s for %s: %w", ErrUntrusted, name, t, err)
	}
	d.Signed, d.Verified, d.Claims, d.KeyID = true, v, &v.Claims, v.Key.ID.String()
	for i, k := range keys {
		if k == v.Key {
			d.KeyName = names[i]
		}
	}
	return d, nil
}

// KeyNames lists the policy's trusted keys, as named in the file.
func (p *Policy) KeyNames() []string {
	var ns []string
	for _, k := range p.Keys {
		ns = append(ns, k.Name)
	}
	return ns
}

// CacheKeys returns the keys whose records the cache at url is trusted for:
// the keys its [[cache]] entry names (every key when it names none, or
// when url has no entry), with their names.
func (p *Policy) CacheKeys(url string) ([]*PublicKey, []string) {
	names := p.KeyNames()
	for _, c := range p.Caches {
		if c.URL == url && len(c.Keys) > 0 {
			names = c.Keys
			break
		}
	}
	keys := make([]*PublicKey, len(names))
	for i, n := range names {
		keys[i] = p.keys[n]
	}
	return keys, names
}

// Key returns the trusted key with the given name.
func (p *Policy) Key(name string) *PublicKey { return p.keys[name] }

// SigPath is where kiln looks for an artifact's signature: next to it, with
// ".minisig" appended (minisign's default).
func SigPath(artifact string) string { return artifact + ".minisig" }

// ReadSig reads the signature file at file; a missing file is (nil, nil).
func ReadSig(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	return b, nil
}

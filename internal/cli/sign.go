package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/attest"
	"kiln.dev/kiln/internal/cache"
	"kiln.dev/kiln/internal/trust"
	"kiln.dev/kiln/recipes"
)

// Flags of the trust policy, shared by the commands that write devices.
var (
	policyFlag = &cli.StringFlag{Name: "policy", Usage: "trust policy `FILE` (default $KILN_POLICY; none: no signature required)"}
	sigFlag    = &cli.StringFlag{Name: "sig", Aliases: []string{"x"}, Usage: "signature `FILE` (default ARTIFACT.minisig)"}
	groupFlag  = &cli.StringFlag{Name: "group", Usage: "device `GROUP` the trust policy may select on"}
)

func init() {
	register(&cli.Command{
		Name:      "sign",
		Usage:     "sign artifacts with an Ed25519 key in minisign's format (FILE.minisig)",
		ArgsUsage: "FILE... (a build output directory signs each of its outputs and its manifest)",
		Description: "The trusted comment carries the file's sha256 and, from manifest.json beside it, the derivation hash.\n" +
			"minisign -V -P PUBKEY -m FILE verifies the signature.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Aliases: []string{"s"}, Usage: "secret key `FILE` (default $KILN_KEY or ~/.config/kiln/kiln.key)"},
			&cli.StringFlag{Name: "password-file", Usage: "read an encrypted key's password from `FILE`"},
			&cli.StringFlag{Name: "derivation", Usage: "derivation `HASH` for the trusted comment (default: from manifest.json beside FILE)"},
			sigFlag,
			jsonFlag,
		},
		Action: runSign,
	})
	register(&cli.Command{
		Name:      "verify-sig",
		Usage:     "check a minisign signature of a file against trusted keys",
		ArgsUsage: "FILE",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "pub", Aliases: []string{"p"}, Usage: "public key `FILE` (repeatable; default: the policy's keys, else kiln keygen's)"},
			&cli.StringSliceFlag{Name: "P", Usage: "public `KEY` as minisign's base64 line (repeatable)"},
			policyFlag,
			sigFlag,
			jsonFlag,
		},
		Action: runVerifySig,
	})
}

// buildManifest is the part of a build's manifest.json signing needs.
type buildManifest struct {
	Derivation string                     `json:"derivation"`
	Outputs    map[string]json.RawMessage `json:"outputs"`
}

func readBuildManifest(dir string) (*buildManifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m buildManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "manifest.json"), err)
	}
	return &m, nil
}

// signTargets expands build directories into the files to sign.
func signTargets(args []string) ([]string, error) {
	var files []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, a)
			continue
		}
		m, err := readBuildManifest(a)
		if err != nil {
			return nil, withHint(fmt.Errorf("sign %s: not a build output directory: %w", a, err), "give the files to sign, or a directory kiln build wrote")
		}
		var names []string
		for n := range m.Outputs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range append(names, "manifest.json") {
			files = append(files, filepath.Join(a, n))
		}
	}
	return files, nil
}

type signReport struct {
	File       string `json:"file"`
	Sig        string `json:"sig"`
	SHA256     string `json:"sha256"`
	Derivation string `json:"derivation,omitempty"`
	KeyID      string `json:"key_id"`
}

func runSign(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usagef("sign: want FILE... (see kiln sign --help)")
	}
	e := envOf(c)
	keyPath := c.String("key")
	if keyPath == "" {
		keyPath = defaultKeyPath()
	}
	sk, err := loadSecretKey(keyPath, c.String("password-file"))
	if err != nil {
		return err
	}
	files, err := signTargets(args)
	if err != nil {
		return err
	}
	if c.String("sig") != "" && len(files) != 1 {
		return usagef("sign: --sig names one signature file, but there are %d files to sign", len(files))
	}
	now := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			now = time.Unix(n, 0)
		}
	}
	var reps []signReport
	for _, f := range files {
		deriv := c.String("derivation")
		if deriv == "" {
			if m, err := readBuildManifest(filepath.Dir(f)); err == nil {
				deriv = m.Derivation
			}
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		sig, claims, err := trust.SignArtifact(sk, bytes.NewReader(data), filepath.Base(f), deriv, now)
		if err != nil {
			return err
		}
		out := c.String("sig")
		if out == "" {
			out = trust.SigPath(f)
		}
		if err := writeKeyFile(out, sig.Encode(), 0o644); err != nil {
			return err
		}
		reps = append(reps, signReport{File: f, Sig: out, SHA256: claims.SHA256, Derivation: deriv, KeyID: sk.ID.String()})
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{"signed": reps})
	}
	for _, r := range reps {
		fmt.Fprintf(e.stdout, "signed %s -> %s (key %s, sha256 %s)\n", r.File, r.Sig, r.KeyID, r.SHA256)
	}
	return nil
}

// verifyKeys collects the keys verify-sig checks against.
func verifyKeys(c *cli.Context) ([]*trust.PublicKey, map[*trust.PublicKey]string, error) {
	names := map[*trust.PublicKey]string{}
	var keys []*trust.PublicKey
	for _, s := range c.StringSlice("P") {
		pk, err := trust.ParsePublicKey([]byte(s))
		if err != nil {
			return nil, nil, usagef("-P %q: %v", s, err)
		}
		keys = append(keys, pk)
		names[pk] = "-P"
	}
	pubs := c.StringSlice("pub")
	for _, p := range pubs {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, err
		}
		pk, err := trust.ParsePublicKey(data)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p, err)
		}
		keys = append(keys, pk)
		names[pk] = p
	}
	if len(keys) > 0 {
		return keys, names, nil
	}
	pol, err := loadPolicy(c)
	if err != nil {
		return nil, nil, err
	}
	if pol != nil {
		for _, n := range pol.KeyNames() {
			pk := pol.Key(n)
			keys = append(keys, pk)
			names[pk] = n
		}
		if len(keys) > 0 {
			return keys, names, nil
		}
	}
	def := pubPathFor(defaultKeyPath())
	data, err := os.ReadFile(def)
	if err != nil {
		return nil, nil, withHint(errors.New("verify-sig: no public key to check against"), "give one with --pub FILE or -P KEY, or a trust policy with --policy")
	}
	pk, err := trust.ParsePublicKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", def, err)
	}
	names[pk] = def
	return []*trust.PublicKey{pk}, names, nil
}

func runVerifySig(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("verify-sig: want one FILE (see kiln verify-sig --help)")
	}
	e := envOf(c)
	file := args[0]
	keys, names, err := verifyKeys(c)
	if err != nil {
		return err
	}
	sigPath := c.String("sig")
	if sigPath == "" {
		sigPath = trust.SigPath(file)
	}
	sigData, err := trust.ReadSig(sigPath)
	if err != nil {
		return err
	}
	if sigData == nil {
		return withHint(fmt.Errorf("%w: %s has no signature (%s)", ErrUntrusted, file, sigPath), "sign it with kiln sign "+file)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sig, err := trust.ParseSignature(sigData)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUntrusted, sigPath, err)
	}
	v, err := trust.VerifyArtifact(keys, f, sig)
	if err != nil {
		return withHint(fmt.Errorf("%w: %s: %w", ErrUntrusted, file, err), "the file, its trusted comment or the key differ from what was signed: do not flash it")
	}
	if c.Bool("json") {
		return e.printJSON(map[string]any{
			"file": file, "sig": sigPath, "ok": true, "key_id": v.Key.ID.String(), "key": names[v.Key],
			"trusted_comment": sig.TrustedComment, "sha256": v.SHA256, "derivation": v.Claims.Derivation,
			"timestamp": v.Claims.Timestamp,
		})
	}
	fmt.Fprintf(e.stdout, "signature ok: %s signed by key %s (%s)\n", file, v.Key.ID, names[v.Key])
	fmt.Fprintf(e.stdout, "trusted comment: %s\n", sig.TrustedComment)
	return nil
}

// loadPolicy reads --policy, else $KILN_POLICY; nil when neither is set.
func loadPolicy(c *cli.Context) (*trust.Policy, error) {
	p := c.String("policy")
	if p == "" {
		p = os.Getenv("KILN_POLICY")
	}
	if p == "" {
		return nil, nil
	}
	pol, err := trust.LoadPolicy(p)
	if err != nil {
		return nil, withHint(err, "the trust policy is TOML: [[key]] name/public_key, [[rule]] boards/groups/ports/require_signature")
	}
	return pol, nil
}

// writeEvidence writes sbom.cdx.json and provenance.json beside the
// manifest.json of a build's output directory. The provenance is signed
// with the signing key ($KILN_KEY or kiln keygen's) when there is one; an
// encrypted key or none leaves only the SBOM, with a note.
func writeEvidence(c *cli.Context, recipeDir string, res *firmware.Result, origins []*cache.Origin) error {
	if res.Out == "" {
		return nil
	}
	e := envOf(c)
	note := func(format string, a ...any) {
		if !c.Bool("json") {
			fmt.Fprintf(e.stderr, "note: "+format+"\n", a...)
		}
	}
	var recipe any
	if r, err := recipes.Load(recipeDir); err == nil {
		recipe = r
	}
	subj := attest.FromManifest(res.Manifest, recipe, nil)
	subj.Started = time.Now().Add(-res.Timings.Total)
	withOrigins(subj, origins)
	return attest.WriteFiles(res.Out, subj, evidenceKey(note))
}

// withOrigins records in the provenance which entries came from a binary
// cache, and from which, signed by whom.
func withOrigins(s *attest.Subject, origins []*cache.Origin) {
	if len(origins) == 0 {
		return
	}
	if s.Internal == nil {
		s.Internal = map[string]any{}
	}
	s.Internal["substitutedFrom"] = origins
}

// evidenceKey is the key provenance is signed with: $KILN_KEY or kiln
// keygen's, when it exists and is not encrypted; nil (with a note) else.
func evidenceKey(note func(string, ...any)) *trust.SecretKey {
	kp := defaultKeyPath()
	data, err := os.ReadFile(kp)
	if err != nil {
		note("no signing key (%s): provenance.json not written; kiln keygen makes one", kp)
		return nil
	}
	key, err := trust.ParseSecretKey(data, nil)
	if err != nil {
		note("%s: %v: provenance.json not written", kp, err)
		return nil
	}
	return key
}

// writeImageEvidence writes sbom.cdx.json and provenance.json beside an
// image build's image.img.
func writeImageEvidence(c *cli.Context, recipeDir, out string, res *recipebuild.Result, origins []*cache.Origin, started time.Time) error {
	e := envOf(c)
	note := func(format string, a ...any) {
		if !c.Bool("json") {
			fmt.Fprintf(e.stderr, "note: "+format+"\n", a...)
		}
	}
	r, err := recipes.Load(recipeDir)
	if err != nil {
		return err
	}
	subj, err := attest.FromImage(res, r, nil)
	if err != nil {
		return err
	}
	subj.Started = started
	withOrigins(subj, origins)
	return attest.WriteFiles(out, subj, evidenceKey(note))
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/cache"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// substituterFlag names binary caches a build or fetch asks first.
var substituterFlag = &cli.StringSliceFlag{Name: "substituter",
	Usage: "ask the binary cache at `URL` before fetching or building (repeatable; also $KILN_SUBSTITUTERS and the policy's [[cache]] tables)"}

// storePushCommand is `kiln store push` (registered in store.go).
var storePushCommand = &cli.Command{
	Name:      "push",
	Usage:     "upload store entries to a binary cache, signed",
	ArgsUsage: "RECIPE_DIR|DERIVATION_HASH|STORE_PATH...",
	Description: "A recipe directory pushes its build output (when built), its toolchain and its inputs. Each entry\n" +
		"is uploaded as a compressed archive named by its sha256, then a record (signed with --key) named by\n" +
		"its store key; an entry whose record is in the cache already is skipped. URL is s3://BUCKET/PREFIX\n" +
		"(?endpoint=URL&region=R&profile=P; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the\n" +
		"shared credentials file) or file:///DIR; http(s):// mirrors are read-only.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "to", Usage: "cache `URL`", Required: true},
		&cli.StringFlag{Name: "key", Aliases: []string{"s"}, Usage: "secret key `FILE` the records are signed with (default $KILN_KEY or ~/.config/kiln/kiln.key)"},
		&cli.StringFlag{Name: "password-file", Usage: "read an encrypted key's password from `FILE`"},
		&cli.BoolFlag{Name: "dry-run", Usage: "say what would be uploaded; upload nothing"},
		&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Value: 4, Usage: "entries uploaded at once"},
		storeFlag, jsonFlag,
	},
	Action: runStorePush,
}

func runStorePush(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usagef("store push: want RECIPE_DIR, DERIVATION_HASH or STORE_PATH (see kiln store push --help)")
	}
	e := envOf(c)
	st, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	paths, err := pushPaths(st, args)
	if err != nil {
		return err
	}
	b, err := cache.Open(c.String("to"))
	if err != nil {
		return cacheHint(err)
	}
	p := &cache.Pusher{Bucket: b, DryRun: c.Bool("dry-run"), Jobs: c.Int("jobs")}
	if !p.DryRun {
		kp := c.String("key")
		if kp == "" {
			kp = defaultKeyPath()
		}
		if p.Key, err = loadSecretKey(kp, c.String("password-file")); err != nil {
			return err
		}
	}
	// gc keeps what a push is uploading.
	release, err := cache.Reference(st, paths)
	if err != nil {
		return err
	}
	defer release()
	bar := newProgress(e.stderr, c.Bool("json"))
	p.Progress = cache.Progress(bar.Func())
	res, err := p.Push(c.Context, paths)
	bar.Done()
	if c.Bool("json") {
		if jerr := e.printJSON(map[string]any{"cache": c.String("to"), "dry_run": p.DryRun, "entries": res}); jerr != nil {
			return jerr
		}
	} else {
		var total int64
		for _, r := range res {
			if r.Action != "" {
				fmt.Fprintf(e.stdout, "%s\t%s\n", r.Action, r.Entry)
			}
			total += r.BytesWritten
		}
		if !p.DryRun {
			fmt.Fprintf(e.stdout, "uploaded %s to %s\n", humanBytes(total), c.String("to"))
		}
	}
	if err != nil {
		return cacheHint(err)
	}
	return nil
}

var hexRE = regexp.MustCompile(`^[0-9a-f]{32,}$`)

// pushPaths turns push's arguments into store entry directories.
func pushPaths(st *store.Store, args []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, a := range args {
		if fi, err := os.Stat(filepath.Join(a, store.ManifestName)); err == nil && fi.Mode().IsRegular() {
			add(filepath.Clean(a))
			continue
		}
		if _, err := os.Stat(filepath.Join(a, "recipe.toml")); err == nil {
			ps, err := recipeEntries(st, a)
			if err != nil {
				return nil, err
			}
			for _, p := range ps {
				add(p)
			}
			continue
		}
		if hexRE.MatchString(a) {
			list, err := st.List()
			if err != nil {
				return nil, err
			}
			n := 0
			for _, en := range list {
				if strings.HasPrefix(a, en.Hash) || strings.HasPrefix(en.Hash, a) {
					add(en.Path)
					n++
				}
			}
			if n == 0 {
				return nil, withHint(fmt.Errorf("store push: no store entry for %s", a), "kiln store ls lists the entries")
			}
			continue
		}
		return nil, usagef("store push: %s is not a recipe directory, a store entry or a hash", a)
	}
	return out, nil
}

// recipeEntries are the store entries a recipe's build uses and makes: its
// toolchain, its inputs and its output (firmware or image).
func recipeEntries(st *store.Store, dir string) ([]string, error) {
	d, err := derive(dir)
	if err != nil {
		return nil, err
	}
	r := d.Recipe()
	type want struct{ key, name, what string }
	var ws []want
	if tc := d.ToolchainDef(); tc != nil {
		ws = append(ws, want{tc.Hash(), tc.Name, "toolchain"})
	}
	for _, in := range r.Inputs {
		ws = append(ws, want{in.StoreKey(), in.Name, "input"})
	}
	var out []string
	for _, w := range ws {
		p, ok := st.Lookup(w.key, w.name)
		if !ok {
			return nil, withHint(fmt.Errorf("store push: %s: %s %s is not in the store", dir, w.what, w.name), "kiln fetch "+dir+" fetches it")
		}
		out = append(out, p)
	}
	p, ok := st.Lookup(d.Hash(), r.Name)
	if !ok {
		return nil, withHint(fmt.Errorf("store push: %s: not built (derivation %s)", dir, d.Hash()), "kiln build "+dir+" first")
	}
	return append(out, p), nil
}

// cacheKeys are the keys whose records are accepted from the cache at url:
// the policy's (its [[cache]] entry for url, else every key), else the
// public half of kiln keygen's key.
func cacheKeys(pol *trust.Policy, url string) ([]*trust.PublicKey, map[string]string) {
	names := map[string]string{}
	if pol != nil {
		keys, ns := pol.CacheKeys(url)
		for i, k := range keys {
			names[k.ID.String()] = ns[i]
		}
		return keys, names
	}
	data, err := os.ReadFile(pubPathFor(defaultKeyPath()))
	if err != nil {
		return nil, names
	}
	pk, err := trust.ParsePublicKey(data)
	if err != nil {
		return nil, names
	}
	names[pk.ID.String()] = "kiln keygen"
	return []*trust.PublicKey{pk}, names
}

// substituters is the ordered set of caches a build or fetch asks: the
// --substituter flags, then $KILN_SUBSTITUTERS (separated by spaces), then
// the policy's [[cache]] tables. nil when there are none.
func substituters(c *cli.Context, note func(format string, args ...any)) (*cache.Set, error) {
	pol, err := loadPolicy(c)
	if err != nil {
		return nil, err
	}
	var urls []string
	urls = append(urls, c.StringSlice("substituter")...)
	urls = append(urls, strings.Fields(os.Getenv("KILN_SUBSTITUTERS"))...)
	if pol != nil {
		for _, ca := range pol.Caches {
			urls = append(urls, ca.URL)
		}
	}
	set := &cache.Set{Note: note}
	seen := map[string]bool{}
	for _, u := range urls {
		if seen[u] {
			continue
		}
		seen[u] = true
		keys, names := cacheKeys(pol, u)
		sub, err := cache.NewSubstituter(u, keys)
		if err != nil {
			return nil, cacheHint(err)
		}
		sub.KeyNames = names
		if len(keys) == 0 {
			note(fmt.Sprintf("cache %s: no key is accepted (no policy and no kiln keygen key): every record will be refused", u))
		}
		set.Subs = append(set.Subs, sub)
	}
	if len(set.Subs) == 0 {
		return nil, nil
	}
	return set, nil
}

// substitution is a build's or fetch's use of the caches: the hook the
// builders call, and what it substituted.
type substitution struct {
	set *cache.Set
	st  *store.Store

	mu      sync.Mutex
	origins []*cache.Origin
	note    func(format string, args ...any)
}

// newSubstitution returns nil when no cache is configured.
func newSubstitution(c *cli.Context, st *store.Store) (*substitution, error) {
	e := envOf(c)
	note := e.note
	set, err := substituters(c, note)
	if err != nil || set == nil {
		return nil, err
	}
	return &substitution{set: set, st: st, note: note}, nil
}

// hook is the Substitute function of fetch.Fetcher, firmware.Options and
// recipebuild.Options; nil for a nil substitution.
func (s *substitution) hook() func(ctx context.Context, key, name string) (string, bool) {
	if s == nil {
		return nil
	}
	return func(ctx context.Context, key, name string) (string, bool) {
		p, o, err := s.set.Substitute(ctx, s.st, key, name)
		if err != nil {
			if !errors.Is(err, cache.ErrMiss) {
				s.note("%v", err)
			}
			return "", false
		}
		if o != nil {
			s.mu.Lock()
			s.origins = append(s.origins, o)
			s.mu.Unlock()
			signer := o.Signer
			if o.SignerName != "" {
				signer += " (" + o.SignerName + ")"
			}
			s.note("substituted %s from %s, signed by %s", o.Entry, o.Cache, signer)
		}
		return p, true
	}
}

// Origins are the entries substituted so far.
func (s *substitution) Origins() []*cache.Origin {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*cache.Origin(nil), s.origins...)
}

func cacheHint(err error) error {
	switch {
	case errors.Is(err, cache.ErrAuth):
		return withHint(err, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / ?profile=NAME for a profile in ~/.aws/credentials, to credentials that may write the bucket")
	case errors.Is(err, cache.ErrReadOnly):
		return withHint(err, "http:// and https:// caches are read-only mirrors: push to the s3:// or file:// URL they serve")
	case errors.Is(err, cache.ErrBadURL):
		return withHint(err, "cache URLs: s3://BUCKET/PREFIX?endpoint=https://HOST&region=R, https://HOST/PATH, file:///DIR")
	case errors.Is(err, cache.ErrUnavailable):
		return withHint(err, "the cache did not answer after retries: check the endpoint and the network")
	}
	return err
}

func runCacheVerify(c *cli.Context, url string) error {
	e := envOf(c)
	pol, err := loadPolicy(c)
	if err != nil {
		return err
	}
	b, err := cache.Open(url)
	if err != nil {
		return cacheHint(err)
	}
	keys, _ := cacheKeys(pol, url)
	rep, err := cache.Verify(c.Context, b, keys, 4)
	if err != nil {
		return cacheHint(err)
	}
	if c.Bool("json") {
		if err := e.printJSON(map[string]any{"cache": url, "records": rep.Records, "unreferenced": rep.Unreferenced, "bad": rep.Bad}); err != nil {
			return err
		}
	} else {
		for _, r := range rep.Records {
			if r.OK {
				fmt.Fprintf(e.stdout, "ok\t%s\t%s\n", r.Key, r.Name)
			} else {
				fmt.Fprintf(e.stdout, "BAD\t%s\t%s\t%s\n", r.Key, r.Name, r.Error)
			}
		}
		for _, u := range rep.Unreferenced {
			fmt.Fprintf(e.stdout, "unreferenced\t%s\n", u)
		}
		fmt.Fprintf(e.stdout, "%d records, %d bad; %d content objects no record names (left by interrupted pushes)\n",
			len(rep.Records), rep.Bad, len(rep.Unreferenced))
	}
	if rep.Bad > 0 {
		hints := []string{"a bad record is never used; push the entry again from a good store to replace it"}
		if len(keys) == 0 {
			hints = append(hints, "no key is accepted: name the pushing key in the trust policy ([[key]], and [[cache]] url/keys), or run kiln keygen")
		}
		return withHint(fmt.Errorf("store verify: cache %s: %d of %d records bad", url, rep.Bad, len(rep.Records)), hints...)
	}
	return nil
}

package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln.dev/kiln/internal/cache/cachetest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

var kilnBin struct {
	once sync.Once
	path string
	err  error
}

// kiln builds the kiln binary once per test run.
func kiln(t testing.TB) string {
	t.Helper()
	kilnBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-cache-bin-")
		if err != nil {
			kilnBin.err = err
			return
		}
		kilnBin.path = filepath.Join(dir, "kiln")
		out, err := exec.Command("go", "build", "-o", kilnBin.path, "kiln.dev/kiln/cmd/kiln").CombinedOutput()
		if err != nil {
			kilnBin.err = fmt.Errorf("go build kiln: %v: %s", err, out)
		}
	})
	if kilnBin.err != nil {
		t.Fatal(kilnBin.err)
	}
	return kilnBin.path
}

func recipeDir(name string) string {
	p, _ := filepath.Abs(filepath.Join("..", "..", "recipes", name))
	return p
}

// closure fetches (once, into the default store, as a user's kiln would)
// the toolchain and inputs of the named recipes and returns their entries.
func closure(t testing.TB, names ...string) []string {
	t.Helper()
	st, err := store.Open("")
	if err != nil {
		t.Fatal(err)
	}
	f := &fetch.Fetcher{Store: st}
	ctx := context.Background()
	var out []string
	for _, n := range names {
		r, err := recipes.Load(recipeDir(n))
		if err != nil {
			t.Fatal(err)
		}
		if r.Toolchain != "" {
			tc, err := recipes.LoadToolchain(r.Toolchain)
			if err != nil {
				t.Fatal(err)
			}
			p, err := f.Toolchain(ctx, tc)
			if err != nil {
				t.Fatalf("fetch %s: %v", tc.Name, err)
			}
			out = append(out, p)
		}
		for _, in := range r.Inputs {
			p, err := f.Input(ctx, in)
			if err != nil {
				t.Fatalf("fetch %s: %v", in.Name, err)
			}
			out = append(out, p)
		}
	}
	return out
}

// machine is a namespace with its own store, home and environment.
type machine struct {
	t    testing.TB
	ns   string
	dir  string
	env  []string
	name string
}

func newMachine(t testing.TB, n *cachetest.Net, name string, seed []string) *machine {
	m := &machine{t: t, ns: n.Machine(t), dir: t.TempDir(), name: name}
	home := filepath.Join(m.dir, "home")
	os.MkdirAll(home, 0o755)
	os.MkdirAll(filepath.Join(m.dir, "store"), 0o755)
	// Directories only: the seeded files are hard links to the default
	// store's, whose modes are part of their entries' seals.
	t.Cleanup(func() { exec.Command("find", m.dir, "-type", "d", "-exec", "chmod", "u+w", "{}", "+").Run() })
	for _, e := range seed {
		if out, err := exec.Command("cp", "-al", e, filepath.Join(m.dir, "store")).CombinedOutput(); err != nil {
			t.Fatalf("seed %s: %v: %s", name, err, out)
		}
	}
	m.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "KILN_STORE=" + filepath.Join(m.dir, "store"),
		"KILN_KEY=" + filepath.Join(home, "kiln.key"), "TMPDIR=" + os.TempDir(), "GOCOVERDIR=" + os.TempDir()}
	return m
}

func (m *machine) store() *store.Store { st, _ := store.Open(filepath.Join(m.dir, "store")); return st }

// run runs kiln on the machine and returns stdout; it fails the test
// unless the exit code is want.
func (m *machine) run(want int, args ...string) (string, string) {
	m.t.Helper()
	cmd := cachetest.Command(m.ns, kiln(m.t), args...)
	cmd.Env = m.env
	cmd.Dir = m.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		m.t.Fatalf("%s: kiln %s: %v", m.name, strings.Join(args, " "), err)
	}
	if code != want {
		m.t.Fatalf("%s: kiln %s: exit %d, want %d\nstdout: %s\nstderr: %s", m.name, strings.Join(args, " "), code, want, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

// try runs kiln on the machine and returns its exit code.
func (m *machine) try(args ...string) int {
	cmd := cachetest.Command(m.ns, kiln(m.t), args...)
	cmd.Env = m.env
	cmd.Dir = m.dir
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func sameFile(t testing.TB, a, b string) {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

// TestMachines (Must show 1): machine A builds blink-uno and rpi-appliance
// and pushes them to SeaweedFS; machine B, with an empty store and a
// network that reaches only the cache, builds both through the HTTPS mirror
// (its trust policy names the cache and A's key) with no compiler run and
// gets byte-identical outputs; machine C substitutes A's firmware and
// flashes it to an emulated Uno under a policy that requires A's signature.
func TestMachines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds firmware and an image on three machines")
	}
	t.Parallel() // mostly waiting on kiln processes: overlap with the other tests
	seed := closure(t, "blink-uno", "rpi-appliance")
	n := cachetest.NewNet(t)
	w := cachetest.StartWeed(t, n.Server, n.ServerIP)
	mirror := cachetest.StartMirror(t, w, n.Server, n.ServerIP, "team")

	a := newMachine(t, n, "A", seed)
	a.env = append(a.env, "AWS_ACCESS_KEY_ID="+cachetest.AccessKey, "AWS_SECRET_ACCESS_KEY="+cachetest.SecretKey)
	a.run(0, "keygen")
	out, _ := a.run(0, "build", recipeDir("blink-uno"), "--out", filepath.Join(a.dir, "blink"), "--json")
	var built struct {
		Hit bool `json:"hit"`
	}
	json.Unmarshal([]byte(out), &built)
	if built.Hit {
		t.Fatal("A: blink-uno was a store hit; A must build it")
	}
	a.run(0, "image", "build", recipeDir("rpi-appliance"), "--out", filepath.Join(a.dir, "rpi"))
	a.run(0, "sign", filepath.Join(a.dir, "blink"))
	out, _ = a.run(0, "store", "push", "--to", w.URL("team"), recipeDir("blink-uno"), recipeDir("rpi-appliance"))
	if !strings.Contains(out, "pushed") {
		t.Fatalf("A: push: %s", out)
	}
	pub, err := os.ReadFile(filepath.Join(a.dir, "home", "kiln.pub"))
	if err != nil {
		t.Fatal(err)
	}
	var pubLine string
	for _, l := range strings.Split(string(pub), "\n") {
		if l != "" && !strings.HasPrefix(l, "untrusted comment:") {
			pubLine = l
		}
	}

	// B: empty store, policy naming the mirror and A's key.
	b := newMachine(t, n, "B", nil)
	policy := filepath.Join(b.dir, "policy.toml")
	os.WriteFile(policy, []byte(fmt.Sprintf("[[key]]\nname = \"ci\"\npublic_key = %q\n\n[[cache]]\nurl = %q\nkeys = [\"ci\"]\n", pubLine, mirror.URL)), 0o644)
	b.env = append(b.env, "SSL_CERT_FILE="+mirror.CAFile, "KILN_POLICY="+policy)
	// B cannot reach Debian: apt has no route out of B's namespace.
	out, stderr := b.run(0, "build", recipeDir("blink-uno"), "--out", filepath.Join(b.dir, "blink"), "--json")
	var bj struct {
		Hit         bool `json:"hit"`
		Substituted bool `json:"substituted"`
		From        []struct {
			Cache string `json:"cache"`
		} `json:"substituted_from"`
	}
	if err := json.Unmarshal([]byte(out), &bj); err != nil {
		t.Fatal(err)
	}
	if !bj.Hit || !bj.Substituted || len(bj.From) != 1 || bj.From[0].Cache != mirror.URL {
		t.Fatalf("B: blink-uno not substituted from the mirror: %s\n%s", out, stderr)
	}
	for _, f := range []string{"firmware.elf", "firmware.hex", "firmware.bin", "manifest.json"} {
		sameFile(t, filepath.Join(a.dir, "blink", f), filepath.Join(b.dir, "blink", f))
	}
	prov, _ := os.ReadFile(filepath.Join(b.dir, "blink", "sbom.cdx.json"))
	if len(prov) == 0 {
		t.Fatal("B: no evidence written")
	}
	b.run(0, "image", "build", recipeDir("rpi-appliance"), "--out", filepath.Join(b.dir, "rpi"))
	for _, f := range []string{"image.img", "image.bmap", "manifest.json"} {
		sameFile(t, filepath.Join(a.dir, "rpi", f), filepath.Join(b.dir, "rpi", f))
	}
	// No compiler ran on B: its store holds no toolchain, only what it
	// substituted (the firmware and the image's inputs).
	list, _ := b.store().List()
	for _, e := range list {
		if strings.Contains(e.Name, "gcc") {
			t.Fatalf("B fetched a toolchain: %s", e.Path)
		}
		if o := OriginOf(b.store(), e.Path); o == nil || o.Cache != mirror.URL {
			t.Fatalf("B: %s has no origin in the mirror", e.Path)
		}
	}
	out, _ = b.run(0, "store", "verify")
	if strings.Contains(out, "TAMPERED") {
		t.Fatal(out)
	}

	// C: substitutes straight from the bucket (anonymous reads), then flashes
	// A's signed firmware to an emulated Uno under a policy requiring A's key.
	c := newMachine(t, n, "C", nil)
	cpol := filepath.Join(c.dir, "policy.toml")
	os.WriteFile(cpol, []byte(fmt.Sprintf("[[key]]\nname = \"ci\"\npublic_key = %q\n\n[default]\nrequire_signature = true\n\n[[cache]]\nurl = %q\n", pubLine, w.URL("team"))), 0o644)
	c.env = append(c.env, "KILN_POLICY="+cpol)
	c.run(0, "build", recipeDir("blink-uno"), "--out", filepath.Join(c.dir, "fw"))
	sig, _ := os.ReadFile(filepath.Join(a.dir, "blink", "firmware.hex.minisig"))
	os.WriteFile(filepath.Join(c.dir, "fw", "firmware.hex.minisig"), sig, 0o644)
	out, stderr = c.run(0, "flash", "--board", "arduino-uno", "--port", "emu:arduino-uno", filepath.Join(c.dir, "fw", "firmware.hex"))
	if !strings.Contains(out+stderr, "verified") {
		t.Fatalf("C: flash: %s %s", out, stderr)
	}
}

// sharedInputs writes an image recipe whose inputs are n random blobs with
// file: sources, fetches them into a template store, then deletes the
// blobs: from then on only a cache can supply the inputs.
func sharedInputs(t testing.TB, n int) (recipe string, entries []string) {
	t.Helper()
	dir := t.TempDir()
	recipe = filepath.Join(dir, "recipe")
	os.MkdirAll(recipe, 0o755)
	var inputs strings.Builder
	for i := range n {
		blob := make([]byte, (1+i%3)<<20)
		for j := range blob {
			blob[j] = byte(j*31 + i*7 + j>>11)
		}
		f := filepath.Join(dir, fmt.Sprintf("blob%d", i))
		os.WriteFile(f, blob, 0o644)
		sum, _ := store.HashFile(f)
		fmt.Fprintf(&inputs, "[[inputs]]\nname = \"blob%d\"\nsources = [\"file:%s\"]\nsha256 = %q\n\n", i, f, sum)
	}
	os.WriteFile(filepath.Join(recipe, "recipe.toml"), []byte(`name = "shared-inputs"
version = "1.0.0"
kind = "image"
board = "rpi-3b"

`+inputs.String()+`[image]
table = "mbr"
size = "64MiB"
source_date_epoch = 1751414400

[[image.partitions]]
name = "data"
fs = "fat32"
size = "40MiB"
contents = [{ from = "blob0:blob0", to = "blob0" }]
`), 0o644)
	tmpl, err := store.Open(filepath.Join(dir, "template"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := recipes.Load(recipe)
	if err != nil {
		t.Fatal(err)
	}
	f := &fetch.Fetcher{Store: tmpl}
	for _, in := range r.Inputs {
		p, err := f.Input(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, p)
		os.Remove(strings.TrimPrefix(in.Sources[0], "file:"))
	}
	return recipe, entries
}

// TestConcurrentClients (Must show 4): 16 clients, each in its own network
// namespace with its own store, push the same entries to SeaweedFS at once
// and substitute them into fresh stores while the others are still
// pushing. Every client ends with identical, verified entries, and the
// cache verifies clean: concurrent pushes of one entry write the same
// bytes, and a record never comes before its content.
func TestConcurrentClients(t *testing.T) {
	t.Parallel()
	const clients = 16
	recipe, entries := sharedInputs(t, 4)
	n := cachetest.NewNet(t)
	w := cachetest.StartWeed(t, n.Server, n.ServerIP)
	key := filepath.Join(t.TempDir(), "kiln.key")
	if out, err := exec.Command(kiln(t), "keygen", "--key", key).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	ms := make([]*machine, clients)
	for i := range ms {
		ms[i] = newMachine(t, n, fmt.Sprintf("client%d", i), entries)
		ms[i].env = append(ms[i].env, "KILN_KEY="+key, "AWS_ACCESS_KEY_ID="+cachetest.AccessKey, "AWS_SECRET_ACCESS_KEY="+cachetest.SecretKey)
	}
	url := w.URL("fleet")
	var wg sync.WaitGroup
	outs := make([]string, clients)
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 1 {
				// Half of them substitute first, while the others push: until
				// a record is there, the fetch fails (the blobs are gone).
				deadline := time.Now().Add(2 * time.Minute)
				for m.try("fetch", "--store", filepath.Join(m.dir, "fresh0"), "--substituter", "file:///nonexistent", "--substituter", url, recipe) != 0 {
					if time.Now().After(deadline) {
						t.Errorf("%s: nothing to substitute after 2 minutes", m.name)
						return
					}
				}
			}
			push := []string{"store", "push", "--to", url}
			for _, e := range entries {
				push = append(push, filepath.Join(m.dir, "store", filepath.Base(e)))
			}
			m.run(0, push...)
			outs[i], _ = m.run(0, "fetch", "--store", filepath.Join(m.dir, "fresh"), "--substituter", url, recipe)
		}()
	}
	wg.Wait()
	_ = outs
	// Every client holds the same verified entries, each from the cache.
	want := map[string]bool{}
	for _, e := range entries {
		want[filepath.Base(e)] = true
	}
	for _, m := range ms {
		st, _ := store.Open(filepath.Join(m.dir, "fresh"))
		list, _ := st.List()
		if len(list) != len(entries) {
			t.Fatalf("%s: %d entries, want %d", m.name, len(list), len(entries))
		}
		for _, e := range list {
			if !want[filepath.Base(e.Path)] {
				t.Fatalf("%s: unexpected entry %s", m.name, e.Path)
			}
			if err := st.Verify(e.Path); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			for _, tmpl := range entries {
				if filepath.Base(tmpl) == filepath.Base(e.Path) {
					sameTree(t, tmpl, e.Path)
				}
			}
			if o := OriginOf(st, e.Path); o == nil || o.Cache != url {
				t.Fatalf("%s: %s not substituted from the cache", m.name, e.Path)
			}
		}
	}
	out, _ := ms[0].run(0, "store", "verify", "--cache", url, "--json")
	var rep VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Bad != 0 || len(rep.Records) != len(entries) || len(rep.Unreferenced) != 0 {
		t.Fatalf("cache after 16 clients: %s", out)
	}
}

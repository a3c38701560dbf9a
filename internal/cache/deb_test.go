package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/cache/cachetest"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
	"kiln.dev/kiln/recipes"
)

// aptRepo is a local apt repository and an apt-get that uses only it.
type aptRepo struct {
	dir, aptGet string
	opts        []string
}

func newAptRepo(t *testing.T) *aptRepo {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("no apt-get: not a Debian system")
	}
	dir := t.TempDir()
	r := &aptRepo{dir: dir}
	for _, d := range []string{"repo", "lists/partial", "cache/archives/partial", "etc"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "etc", "sources.list"), []byte("deb [trusted=yes] file:"+filepath.Join(dir, "repo")+" ./\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "status"), nil, 0o644)
	r.opts = []string{"-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "etc", "sources.list"), "-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "etc"),
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"), "-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "Dir::State::status=" + filepath.Join(dir, "status"), "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
		"-o", "Dir::Etc::Preferences=/dev/null", "-o", "Dir::Etc::PreferencesParts=" + filepath.Join(dir, "etc")}
	r.aptGet = filepath.Join(dir, "apt-get")
	os.WriteFile(r.aptGet, []byte("#!/bin/sh\nexec apt-get "+strings.Join(r.opts, " ")+" \"$@\"\n"), 0o755)
	return r
}

// publish makes the repository serve exactly the given versions of pkg.
func (r *aptRepo) publish(t *testing.T, pkg string, versions ...string) map[string]string {
	repo := filepath.Join(r.dir, "repo")
	ents, _ := os.ReadDir(repo)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(repo, e.Name()))
	}
	sums := map[string]string{}
	var index strings.Builder
	for _, v := range versions {
		root := filepath.Join(r.dir, "build-"+v)
		os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755)
		os.MkdirAll(filepath.Join(root, "usr", "share", pkg), 0o755)
		os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: kiln <kiln@example.org>\nDescription: test package\n", pkg, v)), 0o644)
		os.WriteFile(filepath.Join(root, "usr", "share", pkg, "data"), []byte("payload of "+v+"\n"), 0o644)
		deb := filepath.Join(repo, fmt.Sprintf("%s_%s_all.deb", pkg, v))
		if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb: %v: %s", err, out)
		}
		sum, _ := store.HashFile(deb)
		st, _ := os.Stat(deb)
		sums[v] = sum
		fmt.Fprintf(&index, "Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: kiln <kiln@example.org>\nFilename: ./%s\nSize: %d\nSHA256: %s\nDescription: test package\n\n",
			pkg, v, filepath.Base(deb), st.Size(), sum)
	}
	os.WriteFile(filepath.Join(repo, "Packages"), []byte(index.String()), 0o644)
	if out, err := exec.Command(r.aptGet, "update", "-q").CombinedOutput(); err != nil {
		t.Fatalf("apt-get update: %v: %s", err, out)
	}
	return sums
}

// TestDroppedDebPin (Must show 5): a deb: pin is fetched through apt and
// pushed; the archive then drops that version. A fresh store can no longer
// fetch it from the archive, but gets the same entry from the cache.
func TestDroppedDebPin(t *testing.T) {
	ctx := context.Background()
	repo := newAptRepo(t)
	sums := repo.publish(t, "kiln-dropped", "1.0-1")
	in := recipes.Input{Name: "kiln-dropped", Sources: []string{"deb:kiln-dropped=1.0-1"}, SHA256: sums["1.0-1"]}

	a := newStore(t)
	pa, err := (&fetch.Fetcher{Store: a, APTGet: repo.aptGet}).Input(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	w := cachetest.StartWeed(t, "", "127.0.0.1")
	writerEnv(t)
	sk := newKey(t)
	bk, _ := Open(w.URL("debs"))
	push(t, bk, sk, pa)

	// The archive moves on: 1.0-1 is gone, 1.1-1 replaces it.
	repo.publish(t, "kiln-dropped", "1.1-1")
	b := newStore(t)
	_, err = (&fetch.Fetcher{Store: b, APTGet: repo.aptGet}).Input(ctx, in)
	if !errors.Is(err, fetch.ErrAPT) {
		t.Fatalf("fetch of the dropped version without a cache: %v", err)
	}
	t.Logf("without a cache: %v", err)
	set := &Set{Subs: []*Substituter{{URL: w.URL("debs"), Bucket: bk, Keys: []*trust.PublicKey{sk.Public()}}}}
	f := &fetch.Fetcher{Store: b, APTGet: repo.aptGet, Substitute: func(ctx context.Context, key, name string) (string, bool) {
		p, _, err := set.Substitute(ctx, b, key, name)
		return p, err == nil
	}}
	pb, err := f.Input(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(pb); err != nil {
		t.Fatal(err)
	}
	sameTree(t, pa, pb)
	data, err := os.ReadFile(filepath.Join(pb, "usr", "share", "kiln-dropped", "data"))
	if err != nil || string(data) != "payload of 1.0-1\n" {
		t.Fatalf("substituted content %q %v", data, err)
	}
}

package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

const testHash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeBuild writes out.bin and a builder manifest naming its hash.
func fakeBuild(content string) func(context.Context, string) error {
	return func(_ context.Context, dir string) error {
		sum := sha256.Sum256([]byte(content))
		m, _ := json.Marshal(map[string]string{"out.bin": hex.EncodeToString(sum[:])})
		if err := os.WriteFile(filepath.Join(dir, "out.bin"), []byte(content), 0o444); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "manifest.json"), m, 0o444)
	}
}

func fakeCheck(dir string, entry *Manifest) error {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}
	var outs map[string]string
	if err := json.Unmarshal(data, &outs); err != nil {
		return err
	}
	return CheckOutputs(entry, outs, "manifest.json")
}

type subFunc func(ctx context.Context, hash, name, dir string) (bool, error)

func (f subFunc) Substitute(ctx context.Context, hash, name, dir string) (bool, error) {
	return f(ctx, hash, name, dir)
}

func TestRealise(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	builds := 0
	req := Request{Hash: testHash, Name: "fw", Check: fakeCheck,
		Build: func(ctx context.Context, dir string) error { builds++; return fakeBuild("firmware")(ctx, dir) }}
	rz, err := s.Realise(ctx, req)
	if err != nil || rz.How != Built || builds != 1 {
		t.Fatalf("first realise: %+v, %v, %d builds", rz, err, builds)
	}
	rz, err = s.Realise(ctx, req)
	if err != nil || rz.How != Hit || builds != 1 {
		t.Fatalf("second realise: %+v, %v, %d builds", rz, err, builds)
	}

	// An edited output with a recomputed entry file passes the store's own
	// verification, but not the builder's manifest: refused, not rebuilt.
	out := filepath.Join(rz.Path, "out.bin")
	os.Chmod(rz.Path, 0o755)
	os.Chmod(out, 0o644)
	if err := os.WriteFile(out, []byte("evil"), 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(out, 0o444)
	kept, err := scanForVerify(rz.Path)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.MarshalIndent(Manifest{Format: 1, Name: "fw", Hash: testHash, Files: kept}, "", " ")
	mp := filepath.Join(rz.Path, ManifestName)
	os.Chmod(mp, 0o644)
	if err := os.WriteFile(mp, append(data, '\n'), 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(rz.Path, 0o555)
	if err := s.Verify(rz.Path); err != nil {
		t.Fatalf("the forged entry file should pass store.Verify: %v", err)
	}
	_, err = s.Realise(ctx, req)
	if !errors.Is(err, ErrTampered) || builds != 1 {
		t.Fatalf("tampered hit: %v (%d builds), want ErrTampered and no build", err, builds)
	}
}

func TestRealiseSubstituters(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	s.Substituters = []Substituter{
		subFunc(func(_ context.Context, hash, name, dir string) (bool, error) {
			asked = append(asked, "none")
			return false, nil
		}),
		subFunc(func(ctx context.Context, hash, name, dir string) (bool, error) {
			asked = append(asked, "liar")
			// A substitute whose bytes do not match its own manifest.
			if err := fakeBuild("firmware")(ctx, dir); err != nil {
				return false, err
			}
			os.Chmod(filepath.Join(dir, "out.bin"), 0o644)
			return true, os.WriteFile(filepath.Join(dir, "out.bin"), []byte("evil"), 0o444)
		}),
		subFunc(func(ctx context.Context, hash, name, dir string) (bool, error) {
			asked = append(asked, "cache")
			return true, fakeBuild("firmware")(ctx, dir)
		}),
	}
	builds := 0
	req := Request{Hash: testHash, Name: "fw", Check: fakeCheck,
		Build: func(ctx context.Context, dir string) error { builds++; return fakeBuild("firmware")(ctx, dir) }}
	rz, err := s.Realise(ctx, req)
	if err != nil || rz.How != Substituted || builds != 0 {
		t.Fatalf("realise: %+v, %v, %d builds", rz, err, builds)
	}
	if want := "[none liar cache]"; fmt.Sprint(asked) != want {
		t.Fatalf("asked %v, want %s", asked, want)
	}
	if err := s.Verify(rz.Path); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(rz.Path, "out.bin"))
	if string(got) != "firmware" {
		t.Fatalf("entry holds %q", got)
	}

	// NoSubstitute builds.
	req.Hash = "f" + testHash[1:]
	req.NoSubstitute = true
	if rz, err := s.Realise(ctx, req); err != nil || rz.How != Built || builds != 1 {
		t.Fatalf("no-substitute realise: %+v, %v, %d builds", rz, err, builds)
	}
}

func TestPublishReplacesPlantedSymlinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	for _, n := range []string{"firmware.bin", "firmware.bin.tmp"} {
		if err := os.Symlink(victim, filepath.Join(out, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := Publish(out, []File{{Name: "firmware.bin", Data: []byte("fw")}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "secret" {
		t.Fatalf("victim now holds %q", b)
	}
	fi, err := os.Lstat(filepath.Join(out, "firmware.bin"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("firmware.bin: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(out)
	if len(ents) != 2 {
		t.Fatalf("out holds %d names, want firmware.bin and the untouched .tmp link", len(ents))
	}
}

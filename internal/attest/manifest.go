package attest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/internal/trust"
)

// FromManifest describes the build a firmware manifest records. recipe is
// the recipe as written (for the provenance's external parameters); nil
// uses the manifest's own fields. Debian architectures come from arch
// (nil: DebArchs, the host's apt cache).
func FromManifest(m *firmware.Manifest, recipe any, arch func([]Package) map[string]string) *Subject {
	s := &Subject{
		Name: m.Name, Version: m.Version, Board: m.Board, Kind: "firmware", Derivation: m.Derivation,
		BuilderID: "https://kiln.dev/builder/firmware", BuilderVersion: m.Builder, BuilderDigest: m.BuilderDigest,
		Toolchain: m.Toolchain.Name, Recipe: recipe,
		Time: time.Unix(m.SourceDateEpoch, 0).UTC(),
		Internal: map[string]any{
			"sandbox":           m.Sandbox,
			"source_date_epoch": m.SourceDateEpoch,
			"host_impurities":   m.HostImpurities,
			"load_address":      m.LoadAddress,
			"image_sha256":      m.ImageSHA256,
		},
	}
	if recipe == nil {
		s.Recipe = map[string]any{"name": m.Name, "version": m.Version, "board": m.Board, "toolchain": m.Toolchain.Name, "inputs": m.Inputs}
	}
	for name, o := range m.Outputs {
		s.Outputs = append(s.Outputs, File{Name: name, SHA256: o.SHA256, Size: o.Size})
	}
	for _, p := range m.Toolchain.Packages {
		var srcs []string
		if p.Source != "" {
			srcs = []string{p.Source}
		}
		s.Packages = append(s.Packages, Package{Name: p.Name, SHA256: p.SHA256, Sources: srcs, Linked: p.Linked})
	}
	for _, in := range m.Inputs {
		s.Inputs = append(s.Inputs, Package{Name: in.Name, SHA256: in.SHA256, Sources: in.Sources})
	}
	for _, f := range m.Sources {
		s.Sources = append(s.Sources, File{Name: f.Path, SHA256: f.SHA256})
	}
	// One host file may be shown at several places in the sandbox (the
	// dynamic loader): list it once.
	seenHost := map[string]bool{}
	for _, h := range m.HostImpurities {
		if !seenHost[h.Path] {
			seenHost[h.Path] = true
			s.Host = append(s.Host, File{Name: h.Path, SHA256: h.SHA256})
		}
	}
	if arch == nil {
		arch = DebArchs
	}
	all := append(append([]Package(nil), s.Packages...), s.Inputs...)
	archs := arch(all)
	for i := range s.Packages {
		s.Packages[i].Arch = archs[s.Packages[i].Name]
	}
	for i := range s.Inputs {
		s.Inputs[i].Arch = archs[s.Inputs[i].Name]
	}
	return s
}

// DebArchs asks the host's apt cache (offline: apt-cache reads the package
// lists apt-get download used) for the architecture of each pinned Debian
// package version. Packages it cannot find are left out; their purls then
// carry no arch qualifier.
func DebArchs(ps []Package) map[string]string {
	out := map[string]string{}
	byDeb := map[string]string{} // "name=version" -> package name in the manifest
	args := []string{"show", "--no-all-versions"}
	for _, p := range ps {
		if p.debArch() != "" {
			continue // the source names it: deb:NAME:ARCH=VERSION
		}
		if n, v, ok := p.Deb(); ok && v != "" {
			byDeb[n+"="+v] = p.Name
			args = append(args, n+"="+v)
		}
	}
	if len(byDeb) == 0 {
		return out
	}
	// A version's architecture never changes: answers are cached, so only
	// the first build of a toolchain pays for apt-cache.
	cache := debArchCache()
	missing := false
	for nv, name := range byDeb {
		if a, ok := cache[nv]; ok {
			out[name] = a
		} else {
			missing = true
		}
	}
	if !missing {
		return out
	}
	defer func() {
		for nv, name := range byDeb {
			if a, ok := out[name]; ok {
				cache[nv] = a
			}
		}
		saveDebArchCache(cache)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// apt-cache prints what it finds and fails if any one is missing: use
	// what it printed either way.
	data, _ := exec.CommandContext(ctx, "apt-cache", args...).Output()
	var pkg, ver string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		switch k {
		case "Package":
			pkg, ver = v, ""
		case "Version":
			ver = v
		case "Architecture":
			if name, ok := byDeb[pkg+"="+ver]; ok {
				out[name] = v
			}
		}
	}
	return out
}

// Write writes sbom.cdx.json and provenance.json for the build m into
// outDir (beside its manifest.json). The provenance is signed with key; with
// a nil key only the SBOM is written.
func Write(outDir string, m *firmware.Manifest, recipe any, key *trust.SecretKey) error {
	return WriteFiles(outDir, FromManifest(m, recipe, nil), key)
}

// debArchCachePath is where DebArchs keeps its answers.
func debArchCachePath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "kiln", "deb-arch.json")
}

func debArchCache() map[string]string {
	m := map[string]string{}
	if p := debArchCachePath(); p != "" {
		if b, err := os.ReadFile(p); err == nil {
			json.Unmarshal(b, &m)
		}
	}
	return m
}

func saveDebArchCache(m map[string]string) {
	p := debArchCachePath()
	if p == "" || os.MkdirAll(filepath.Dir(p), 0o755) != nil {
		return
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp, err := os.CreateTemp(filepath.Dir(p), ".deb-arch-*")
	if err != nil {
		return
	}
	tmp.Write(b)
	tmp.Close()
	if os.Rename(tmp.Name(), p) != nil {
		os.Remove(tmp.Name())
	}
}

package attest

import (
	"bytes"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/google/uuid"

	"kiln.dev/kiln"
)

// File names of the evidence in a build output directory.
const (
	SBOMName       = "sbom.cdx.json"
	ProvenanceName = "provenance.json"
)

// Subject is what attest needs to know about one build.
type Subject struct {
	Name       string
	Version    string
	Board      string
	Kind       string // "firmware" or "image"
	Derivation string // derivation hash (hex)
	// BuilderID names the builder (a URI) and BuilderVersion its version.
	BuilderID      string
	BuilderVersion string
	// BuilderDigest is the hash of the output-shaping code the derivation
	// was made with (kiln.BuilderDigest), from the manifest.
	BuilderDigest string
	// Outputs are the artifacts the build produced.
	Outputs []File
	// Toolchain names the pinned toolchain closure; Packages are its parts.
	Toolchain string
	Packages  []Package
	// Inputs are the recipe's fixed-output inputs.
	Inputs []Package
	// Rootfs are the Debian packages of an image's root filesystem (its
	// rootfs.lock), in installation order: what the image ships.
	Rootfs []Package
	// Sources are the recipe's files that entered the build.
	Sources []File
	// Host are files the build took from the host rather than the store
	// (its C library): named so the SBOM does not hide them.
	Host []File
	// Recipe is the recipe as the user wrote it (any JSON-encodable
	// value): the provenance's external parameters.
	Recipe any
	// Internal are the builder's own settings (sandbox, SOURCE_DATE_EPOCH,
	// host impurities): the provenance's internal parameters.
	Internal map[string]any
	// Time is when the build is said to have happened: its
	// SOURCE_DATE_EPOCH, so the SBOM is reproducible.
	Time time.Time
	// Started and Finished bound the invocation the provenance describes
	// (zero: the moment the statement is made); InvocationID names it
	// ("": a random one). They are in the provenance only.
	Started, Finished time.Time
	InvocationID      string
}

// File is a file by name and SHA-256.
type File struct {
	Name   string
	SHA256 string
	Size   int64
}

// Package is a pinned package or input: its content hash and where it comes
// from ("deb:NAME=VERSION", "https://…", "file:…").
type Package struct {
	Name    string
	SHA256  string
	Sources []string
	// Arch is the Debian architecture of a deb: package ("amd64", "all").
	// Empty leaves the purl without an arch qualifier.
	Arch string
	// SourcePackage is a Debian package's source ("NAME VERSION"), if known.
	SourcePackage string
	// Linked: a toolchain package whose code is linked into the firmware
	// (scope "required"; the rest of a toolchain only ran: "excluded").
	Linked bool
}

// Deb returns the Debian package name and version of p's first deb:
// source. A foreign-architecture source (deb:NAME:ARCH=VERSION) gives
// NAME; debArch returns ARCH.
func (p Package) Deb() (name, version string, ok bool) {
	for _, s := range p.Sources {
		if rest, found := strings.CutPrefix(s, "deb:"); found {
			name, version, _ = strings.Cut(rest, "=")
			name, _, _ = strings.Cut(name, ":")
			return name, version, true
		}
	}
	return "", "", false
}

// debArch is the architecture a deb:NAME:ARCH=VERSION source names ("").
func (p Package) debArch() string {
	for _, s := range p.Sources {
		if rest, found := strings.CutPrefix(s, "deb:"); found {
			name, _, _ := strings.Cut(rest, "=")
			_, arch, _ := strings.Cut(name, ":")
			return arch
		}
	}
	return ""
}

// PURL returns the package URL: pkg:deb/debian/NAME@VERSION?arch=ARCH for
// Debian packages, pkg:generic/NAME?checksum=sha256:…&download_url=… for
// others.
func (p Package) PURL() string {
	if name, version, ok := p.Deb(); ok {
		s := "pkg:deb/debian/" + purlEscape(name)
		if version != "" {
			s += "@" + purlEscape(version)
		}
		arch := p.debArch()
		if arch == "" {
			arch = p.Arch
		}
		if arch != "" {
			s += "?arch=" + purlEscape(arch)
		}
		return s
	}
	q := []string{"checksum=sha256:" + p.SHA256}
	for _, s := range p.Sources {
		if strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://") {
			q = append(q, "download_url="+url.QueryEscape(s))
			break
		}
	}
	return "pkg:generic/" + purlEscape(p.Name) + "?" + strings.Join(q, "&")
}

// Version returns the package's version when a deb: source names one.
func (p Package) Version() string {
	_, v, _ := p.Deb()
	return v
}

// purlEscape percent-encodes what the purl spec does not allow bare.
func purlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_~:", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func hashes(sha string) *[]cdx.Hash {
	if sha == "" {
		return nil
	}
	return &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA256, Value: sha}}
}

func props(kv ...string) *[]cdx.Property {
	var ps []cdx.Property
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			ps = append(ps, cdx.Property{Name: kv[i], Value: kv[i+1]})
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return &ps
}

// serial derives the BOM's serial number from the derivation hash: one
// build, one serial, however often it is written.
func serial(derivation string) string {
	return "urn:uuid:" + uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://kiln.dev/derivation/"+derivation)).String()
}

// SBOM returns sbom.cdx.json for s: CycloneDX 1.6 JSON.
func SBOM(s *Subject) ([]byte, error) {
	if s.Name == "" || s.Derivation == "" {
		return nil, fmt.Errorf("attest: sbom: the subject needs a name and a derivation hash")
	}
	kind := cdx.ComponentTypeFirmware
	if s.Kind == "image" {
		kind = cdx.ComponentTypeOS
	}
	topRef := "kiln:" + s.Name + "@" + s.Derivation
	var parts []cdx.Component
	for _, o := range sortedFiles(s.Outputs) {
		parts = append(parts, cdx.Component{
			BOMRef: "output:" + o.Name, Type: cdx.ComponentTypeFile, Name: o.Name, Hashes: hashes(o.SHA256),
			Properties: props("kiln:size", fmt.Sprint(o.Size)),
		})
	}
	top := cdx.Component{
		BOMRef: topRef, Type: kind, Name: s.Name, Version: s.Version,
		Description: fmt.Sprintf("%s %s for %s, built by kiln", s.Kind, s.Name, s.Board),
		Properties: props("kiln:board", s.Board, "kiln:derivation", s.Derivation,
			"kiln:toolchain", s.Toolchain),
	}
	if len(parts) > 0 {
		top.Components = &parts
	}
	var comps []cdx.Component
	var deps []string
	refs := map[string]bool{topRef: true}
	add := func(c cdx.Component) {
		if refs[c.BOMRef] {
			return // the schema wants every component once
		}
		refs[c.BOMRef] = true
		comps = append(comps, c)
		deps = append(deps, c.BOMRef)
	}
	for _, p := range s.Packages {
		// A compiler that only ran is excluded from what ships; a C
		// library, libgcc or newlib linked into the firmware is required.
		typ, scope, role := cdx.ComponentTypeApplication, cdx.ScopeExcluded, "toolchain"
		if p.Linked {
			typ, scope, role = cdx.ComponentTypeLibrary, cdx.ScopeRequired, "toolchain-linked"
		}
		add(cdx.Component{
			BOMRef: "toolchain:" + p.Name, Type: typ, Name: p.Name,
			Version: p.Version(), Hashes: hashes(p.SHA256), PackageURL: p.PURL(), Scope: scope,
			Properties: props("kiln:role", role, "kiln:toolchain", s.Toolchain,
				"kiln:source", strings.Join(p.Sources, " ")),
		})
	}
	for _, p := range s.Inputs {
		add(cdx.Component{
			BOMRef: "input:" + p.Name, Type: cdx.ComponentTypeLibrary, Name: p.Name,
			Version: p.Version(), Hashes: hashes(p.SHA256), PackageURL: p.PURL(), Scope: cdx.ScopeRequired,
			Properties: props("kiln:role", "input", "kiln:source", strings.Join(p.Sources, " ")),
		})
	}
	for _, p := range s.Rootfs {
		add(cdx.Component{
			BOMRef: "rootfs:" + p.Name + ":" + p.Arch, Type: cdx.ComponentTypeLibrary, Name: p.Name,
			Version: p.Version(), Hashes: hashes(p.SHA256), PackageURL: p.PURL(), Scope: cdx.ScopeRequired,
			Properties: props("kiln:role", "rootfs", "kiln:source-package", p.SourcePackage),
		})
	}
	for _, f := range sortedFiles(s.Sources) {
		add(cdx.Component{
			BOMRef: "source:" + f.Name, Type: cdx.ComponentTypeFile, Name: f.Name, Hashes: hashes(f.SHA256),
			Scope: cdx.ScopeRequired, Properties: props("kiln:role", "source"),
		})
	}
	for _, f := range sortedFiles(s.Host) {
		add(cdx.Component{
			BOMRef: "host:" + f.Name, Type: cdx.ComponentTypeFile, Name: f.Name, Hashes: hashes(f.SHA256),
			Scope: cdx.ScopeExcluded, Properties: props("kiln:role", "host"),
		})
	}
	bom := cdx.NewBOM()
	bom.SerialNumber = serial(s.Derivation)
	bom.Metadata = &cdx.Metadata{
		Timestamp: s.Time.UTC().Format(time.RFC3339),
		Tools:     &cdx.ToolsChoice{Components: &[]cdx.Component{toolComponent(s)}},
		Component: &top,
	}
	if len(comps) > 0 {
		bom.Components = &comps
		bom.Dependencies = &[]cdx.Dependency{{Ref: topRef, Dependencies: &deps}}
		for _, r := range deps {
			bom.Dependencies = appendDep(bom.Dependencies, r)
		}
	}
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON).SetPretty(true).SetEscapeHTML(false)
	if err := enc.Encode(bom); err != nil {
		return nil, fmt.Errorf("attest: sbom: %w", err)
	}
	return buf.Bytes(), nil
}

func appendDep(ds *[]cdx.Dependency, ref string) *[]cdx.Dependency {
	out := append(*ds, cdx.Dependency{Ref: ref})
	return &out
}

func sortedFiles(fs []File) []File {
	out := append([]File(nil), fs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// toolComponent is kiln itself in the SBOM: its module version, the
// revision it was built from and the builder digest of the derivation.
func toolComponent(s *Subject) cdx.Component {
	info := kiln.Info()
	c := cdx.Component{
		Type: cdx.ComponentTypeApplication, Name: "kiln", Group: "kiln.dev", Version: info.Version,
		PackageURL: "pkg:golang/" + info.Module + "@" + purlEscape(info.Version),
		Properties: props("kiln:builder", s.BuilderVersion, "kiln:builder_digest", s.BuilderDigest,
			"kiln:revision", revision(info)),
	}
	return c
}

func revision(b kiln.Build) string {
	if b.Revision == "" {
		return ""
	}
	if b.Modified {
		return b.Revision + "+dirty"
	}
	return b.Revision
}

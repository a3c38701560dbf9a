package attest

import (
	"fmt"
	"time"

	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/trust"
	"kiln.dev/kiln/recipes"
)

// FromImage describes an SD-card image build (image/recipebuild) of
// recipe r: the image is the top component, its inputs (kernel, busybox,
// …) and the recipe's files are listed with their hashes, and the host
// tools the build ran are named in the provenance's internal parameters.
// Debian architectures come from arch (nil: DebArchs).
func FromImage(res *recipebuild.Result, r *recipes.Recipe, arch func([]Package) map[string]string) (*Subject, error) {
	d, err := r.Derive()
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	s := &Subject{
		Name: res.Name, Version: res.Version, Board: res.Board, Kind: "image", Derivation: res.Derivation,
		BuilderID: "https://kiln.dev/builder/image", BuilderVersion: fmt.Sprintf("kiln-image/%d", recipes.FormatVersion),
		BuilderDigest: res.BuilderDigest,
		Recipe:        r, Internal: map[string]any{},
	}
	if spec, ok := r.KindData.(*recipes.ImageSpec); ok {
		s.Time = time.Unix(spec.SourceDateEpoch, 0).UTC()
		s.Internal["source_date_epoch"] = spec.SourceDateEpoch
		if spec.Rootfs != nil {
			l, err := spec.Rootfs.Lock(r.Dir)
			if err != nil {
				return nil, fmt.Errorf("attest: %w", err)
			}
			for _, p := range l.Packages {
				src := p.Source
				if src == "" {
					src = p.Name
				}
				if p.SourceVersion != "" {
					src += " " + p.SourceVersion
				}
				s.Rootfs = append(s.Rootfs, Package{Name: p.Name, SHA256: p.SHA256, Arch: p.Arch, SourcePackage: src,
					Sources: []string{"deb:" + p.Name + ":" + p.Arch + "=" + p.Version}})
			}
		}
	}
	if res.Rootfs != nil {
		// The Debian root's own derivation (lock, architecture, epoch,
		// assembly version), which the image was built on.
		s.Internal["rootfs_derivation"] = res.Rootfs.Derivation
	}
	if res.Image != nil {
		s.Internal["host_tools"] = res.Image.Tools
		s.Internal["disk_id"] = res.Image.DiskID
		s.Internal["partitions"] = res.Image.Partitions
	}
	for name, o := range res.Outputs {
		s.Outputs = append(s.Outputs, File{Name: name, SHA256: o.SHA256, Size: o.Size})
	}
	for _, in := range r.Inputs {
		s.Inputs = append(s.Inputs, Package{Name: in.Name, SHA256: in.SHA256, Sources: in.Sources})
	}
	for _, f := range d.SourceFiles() {
		s.Sources = append(s.Sources, File{Name: f.Path, SHA256: f.SHA256})
	}
	if arch == nil {
		arch = DebArchs
	}
	archs := arch(s.Inputs)
	for i := range s.Inputs {
		s.Inputs[i].Arch = archs[s.Inputs[i].Name]
	}
	return s, nil
}

// WriteImage writes sbom.cdx.json and provenance.json for an image build
// into outDir (beside image.img). key nil: the SBOM only.
func WriteImage(outDir string, res *recipebuild.Result, r *recipes.Recipe, key *trust.SecretKey) error {
	s, err := FromImage(res, r, nil)
	if err != nil {
		return err
	}
	return WriteFiles(outDir, s, key)
}

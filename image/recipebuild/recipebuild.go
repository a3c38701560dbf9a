package recipebuild

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/internal/beneath"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// ManifestFile is the build description written beside the image.
const ManifestFile = "manifest.json"

// MetadataFile is the file kiln puts on the autoboot (first) partition.
const MetadataFile = disk.MetadataFile

// Options tune Build.
type Options struct {
	Store    *store.Store
	Log      func(format string, args ...any)      // progress lines; may be nil
	Progress func(phase string, done, total int64) // may be nil
	XZ       image.XZOptions
	NoXZ     bool // skip image.img.xz (an update only needs image.img)
	// Substitute, if set, is asked for inputs before they are fetched (a
	// binary cache; see fetch.Fetcher.Substitute).
	Substitute func(ctx context.Context, key, name string) (string, bool)
	// RebuildRoot assembles a Debian root even when the store holds it
	// (and does not store it): an audit's rebuild checks the root too.
	RebuildRoot bool
}

// Result is what Build made.
type Result struct {
	Derivation string `json:"derivation"`
	// BuilderDigest is the derivation's builder digest (kiln.BuilderDigest).
	BuilderDigest string             `json:"builder_digest"`
	Name          string             `json:"name"`
	Version       string             `json:"version"`
	Board         string             `json:"board"`
	Kind          string             `json:"kind"`
	Outputs       map[string]Out     `json:"outputs"`
	Image         *image.Report      `json:"image"`
	Metadata      *Metadata          `json:"metadata"`
	Inputs        []recipes.InputPin `json:"inputs"`
	// Rootfs names the Debian root's derivation ([image.rootfs] only).
	Rootfs *RootfsRef `json:"rootfs,omitempty"`
}

// Out is one output file.
type Out struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Metadata is kiln.json (disk.Metadata): what the updater needs to find the slots.
type Metadata = disk.Metadata

// Slot is an A/B slot in kiln.json.
type Slot = disk.Slot

// MetaPartition is one partition in kiln.json.
type MetaPartition = disk.MetaPartition

// Build builds the image recipe in dir into outDir.
func Build(ctx context.Context, dir, outDir string, opts Options) (*Result, error) {
	r, err := recipes.Load(dir)
	if err != nil {
		return nil, err
	}
	if r.Kind != recipes.KindImage {
		return nil, fmt.Errorf("image: %s is a %s recipe, not an image recipe", r.File, r.Kind)
	}
	spec := r.KindData.(*recipes.ImageSpec)
	d, err := r.Derive()
	if err != nil {
		return nil, err
	}
	hash := d.Hash()
	f := &fetch.Fetcher{Store: opts.Store, Log: opts.Log, Substitute: opts.Substitute}
	roots := map[string]string{}
	for _, in := range r.Inputs {
		p, err := f.Input(ctx, in)
		if err != nil {
			return nil, err
		}
		root := p
		if in.Subdir != "" {
			if root, err = beneath.Resolve(p, in.Subdir); errors.Is(err, beneath.ErrEscapes) {
				return nil, fmt.Errorf("%s: input %s: subdir %q %w the input (a symlink): refused", r.File, in.Name, in.Subdir, beneath.ErrEscapes)
			} else if err != nil {
				return nil, fmt.Errorf("%s: input %s: subdir %q: %w", r.File, in.Name, in.Subdir, err)
			}
		}
		roots[in.Name] = root
	}
	covered := map[string]bool{}
	for _, sf := range d.SourceFiles() {
		covered[sf.Path] = true
	}
	b := &builder{r: r, roots: roots, covered: covered, store: opts.Store, rebuildRoot: opts.RebuildRoot}

	var initramfs []byte
	if spec.Initramfs != nil {
		t := image.NewTree()
		for _, c := range spec.Initramfs.Contents {
			if err := b.add(t, c, nil); err != nil {
				return nil, fmt.Errorf("image: initramfs: %w", err)
			}
		}
		for _, dev := range spec.Initramfs.Devices {
			p, maj, min, _ := recipes.ParseDevice(dev)
			if err := t.AddCharDevice(p, maj, min, 0o600); err != nil {
				return nil, err
			}
		}
		var buf bytes.Buffer
		if err := image.WriteInitramfs(&buf, t, spec.SourceDateEpoch); err != nil {
			return nil, err
		}
		initramfs = buf.Bytes()
	}

	l := spec.Layout(hash)
	if err := l.Resolve(); err != nil {
		return nil, err
	}
	meta := &Metadata{Derivation: hash, Name: r.Name, Version: r.Version, Board: r.Board, Table: l.Table}
	if spec.RPi != nil {
		meta.AB = spec.RPi.AB
	}
	if l.Table == "mbr" {
		meta.DiskID = fmt.Sprintf("%08x", l.DiskID())
	} else {
		meta.DiskID = l.DiskGUID()
	}
	slotIdx := map[string]*Slot{}
	var slotNames []string
	for i, p := range l.Partitions {
		meta.Partitions = append(meta.Partitions, MetaPartition{Number: l.Number(i), Name: p.Name, PartUUID: l.PartUUID(i),
			Type: p.FS, Label: p.Label, Slot: p.Slot, Start: p.Start, Size: p.Size})
		if p.Slot == "" {
			continue
		}
		s := slotIdx[p.Slot]
		if s == nil {
			s = &Slot{Name: p.Slot}
			slotIdx[p.Slot] = s
			slotNames = append(slotNames, p.Slot)
		}
		if p.FS == image.FAT32 {
			s.Boot = l.Number(i)
		} else {
			s.Root, s.RootPartUUID = l.Number(i), l.PartUUID(i)
		}
	}
	sort.Strings(slotNames)
	for _, n := range slotNames {
		meta.Slots = append(meta.Slots, *slotIdx[n])
	}

	var cleanup []string
	defer func() {
		for _, d := range cleanup {
			os.RemoveAll(d)
		}
	}()
	for i, ps := range spec.Partitions {
		p := l.Partitions[i]
		t := image.NewTree()
		withRoot := false
		for _, c := range ps.Contents {
			if c.From == recipes.RootfsContent {
				withRoot = true
				continue
			}
			if err := b.add(t, c, initramfs); err != nil {
				return nil, fmt.Errorf("image: partition %s: %w", p.Name, err)
			}
		}
		if ps.DerivationFile != "" {
			if err := t.AddBytes(ps.DerivationFile, []byte(hash+"\n"), 0o644); err != nil {
				return nil, err
			}
		}
		if rpi := spec.RPi; rpi != nil && p.FS == image.FAT32 {
			if err := b.rpiPartition(t, d.Board, rpi, p, slotIdx[p.Slot], meta, spec.SourceDateEpoch); err != nil {
				return nil, fmt.Errorf("image: partition %s: %w", p.Name, err)
			}
		}
		p.Contents = t
		if withRoot {
			tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(outDir)), ".kiln-rootfs-")
			if err != nil {
				return nil, fmt.Errorf("image: %w", err)
			}
			cleanup = append(cleanup, tmp)
			if p.Image, err = b.rootFilesystem(ctx, f, spec, l, i, t, tmp, opts.Log); err != nil {
				return nil, fmt.Errorf("image: partition %s: %w", p.Name, err)
			}
			p.Contents = nil
		}
	}

	rep, err := image.Build(ctx, l, outDir, image.BuildOptions{XZ: opts.XZ, NoXZ: opts.NoXZ, Progress: opts.Progress})
	if err != nil {
		return nil, err
	}
	res := &Result{Derivation: hash, BuilderDigest: d.BuilderDigest, Name: r.Name, Version: r.Version, Board: r.Board, Kind: r.Kind,
		Outputs: map[string]Out{}, Image: rep, Metadata: meta, Inputs: d.Inputs, Rootfs: b.root}
	for name, sum := range rep.Files {
		fi, err := os.Stat(filepath.Join(outDir, name))
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		res.Outputs[name] = Out{SHA256: sum, Size: fi.Size()}
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	tmp := filepath.Join(outDir, "."+ManifestFile+".tmp")
	if err := os.WriteFile(tmp, append(js, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(outDir, ManifestFile)); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return res, nil
}

// autoboot is autoboot.txt for Raspberry Pi tryboot A/B: slot a normally,
// slot b for a one-shot trial boot (the updater swaps them on commit).
func autoboot(slots []Slot) []byte {
	var a, bb int
	for _, s := range slots {
		switch s.Name {
		case "a":
			a = s.Boot
		case "b":
			bb = s.Boot
		}
	}
	var w strings.Builder
	fmt.Fprintf(&w, "[all]\ntryboot_a_b=1\nboot_partition=%d\n", a)
	if bb != 0 {
		fmt.Fprintf(&w, "[tryboot]\nboot_partition=%d\n", bb)
	}
	return []byte(w.String())
}

// rpiPartition adds the Raspberry Pi boot files of one FAT partition p:
// slot is p's slot (nil for none).
func (b *builder) rpiPartition(t *image.Tree, board *boards.Board, rpi *recipes.ImageRPi, p *image.Partition, slot *Slot, meta *Metadata, epoch int64) error {
	js, _ := json.MarshalIndent(meta, "", "  ")
	js = append(js, '\n')
	if slot != nil && p.Slot != "" {
		cmd := strings.TrimSpace(rpi.Cmdline+" root=PARTUUID="+slot.RootPartUUID) + "\n"
		if err := t.AddBytes("cmdline.txt", []byte(cmd), 0o644); err != nil {
			return err
		}
		switch rpi.AB {
		case "":
			if err := t.AddBytes("config.txt", []byte(strings.Join(rpi.Config, "\n")+"\n"), 0o644); err != nil {
				return err
			}
		case boards.ABTryboot:
			if err := b.addFirmware(t, board, rpi); err != nil {
				return err
			}
			cfg := rpiConfig(board, "slot "+slot.Name+", booted when autoboot.txt picks partition "+fmt.Sprint(slot.Boot),
				rpi.KernelFile(), rpi.Initramfs, rpi.Config)
			if err := t.AddBytes("config.txt", cfg, 0o644); err != nil {
				return err
			}
		}
		// Each slot's boot partition says which image it holds: the
		// SSH updater writes whole boot partitions and reads this back
		// to tell what a device runs.
		if rpi.Autoboot != p.Name {
			if err := t.AddBytes(MetadataFile, js, 0o644); err != nil {
				return err
			}
		}
	}
	if rpi.Autoboot != p.Name {
		return nil
	}
	switch rpi.AB {
	case "", boards.ABTryboot:
		if err := t.AddBytes("autoboot.txt", autoboot(meta.Slots), 0o644); err != nil {
			return err
		}
	case boards.ABUBootEnv:
		if err := b.addUBoot(t, board, rpi, meta.Slots, epoch); err != nil {
			return err
		}
	}
	return t.AddBytes(MetadataFile, js, 0o644)
}

type builder struct {
	r           *recipes.Recipe
	roots       map[string]string
	covered     map[string]bool
	store       *store.Store
	rebuildRoot bool
	root        *RootfsRef // the Debian root, once rootFilesystem realised it
}

// add copies one content entry into t.
func (b *builder) add(t *image.Tree, c recipes.ImageContent, initramfs []byte) error {
	to := strings.TrimPrefix(path.Clean("/"+c.To), "/")
	if c.From == "initramfs" {
		return t.AddBytes(to, initramfs, 0o644)
	}
	src, rel, _ := strings.Cut(c.From, ":")
	base, what := b.roots[src], "input "+src
	if src == "src" {
		base, what = b.r.Dir, "the recipe directory"
	}
	// The parent is resolved beneath its root (a symlink may not lead out
	// of the input or the recipe); the last name is not followed (a
	// symlink there goes into the image as a symlink).
	clean := path.Clean("/" + rel)
	parent, err := beneath.Resolve(base, "."+path.Dir(clean))
	if errors.Is(err, beneath.ErrEscapes) {
		return fmt.Errorf("%s %w %s (a symlink): refused", c.From, beneath.ErrEscapes, what)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", c.From, image.ErrMissingFile)
	}
	host := filepath.Join(parent, path.Base(clean))
	if clean == "/" {
		host = parent
	}
	if src == "src" {
		// Every recipe file that goes into the image must be hashed into
		// the derivation.
		err := filepath.Walk(host, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			sub, _ := filepath.Rel(host, p)
			r := path.Join(strings.TrimPrefix(clean, "/"), filepath.ToSlash(sub))
			if !b.covered[r] {
				return fmt.Errorf("%s is not covered by the recipe's files globs, so it is not in the derivation", r)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return t.AddFile(to, host)
}

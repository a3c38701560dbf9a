package firmware

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/recipes"
)

// ManifestFormat is the version of manifest.json's layout.
const ManifestFormat = 1

// Builder names this builder and the version of its build rules
// (recipes.FormatVersion, which is part of every derivation).
var Builder = fmt.Sprintf("kiln-firmware/%d", recipes.FormatVersion)

// Manifest describes one build: what went in and what came out. It is
// written as manifest.json beside the outputs and holds no times, so two
// builds of one derivation write the same manifest.
type Manifest struct {
	Format  int    `json:"format"`
	Builder string `json:"builder"`
	// BuilderDigest is the derivation's builder digest (kiln.BuilderDigest).
	BuilderDigest string `json:"builder_digest"`
	Name          string `json:"name"`
	Version       string `json:"version"`
	Board         string `json:"board"`
	Derivation    string `json:"derivation"`

	// Outputs maps file name (firmware.elf, firmware.hex, firmware.bin) to
	// its hash and size.
	Outputs map[string]Output `json:"outputs"`
	// LoadAddress is the address of firmware.bin's first byte.
	LoadAddress uint32 `json:"load_address"`
	// ImageSHA256 is the SHA-256 of the loadable bytes in address order
	// (flash.Image.SHA256): what a flasher reads back and compares.
	ImageSHA256 string `json:"image_sha256"`
	// ImageSize is the number of bytes written to flash; FlashSize is the
	// board's application flash.
	ImageSize int    `json:"image_size"`
	FlashSize uint32 `json:"flash_size"`

	Toolchain ToolchainRef `json:"toolchain"`
	Inputs    []InputRef   `json:"inputs"`
	// Sources are the recipe's files that entered the build, with hashes.
	Sources []FileRef `json:"sources"`

	// HostImpurities are the files taken from the host, not the store.
	HostImpurities  []Impurity `json:"host_impurities"`
	Sandbox         bool       `json:"sandbox"`
	SourceDateEpoch int64      `json:"source_date_epoch"`
}

// Output is one output file.
type Output struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// ToolchainRef names the toolchain closure and the packages in it.
type ToolchainRef struct {
	Name     string       `json:"name"`
	Packages []PackageRef `json:"packages"`
}

// PackageRef is one pinned package of a toolchain.
type PackageRef struct {
	Name   string `json:"name"`
	Source string `json:"source,omitempty"`
	SHA256 string `json:"sha256"`
	// Linked: its code is linked into the firmware (libc, libgcc, newlib).
	Linked bool `json:"linked,omitempty"`
}

// InputRef is one pinned input of the recipe.
type InputRef struct {
	Name    string   `json:"name"`
	SHA256  string   `json:"sha256"`
	Sources []string `json:"sources,omitempty"`
}

// FileRef is a file by path and hash.
type FileRef struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// Marshal returns the manifest as written to manifest.json.
func (m *Manifest) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ParseManifest reads a manifest.json.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("firmware: manifest: %w", err)
	}
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("firmware: manifest: format %d, want %d", m.Format, ManifestFormat)
	}
	if m.Derivation == "" || len(m.Outputs) == 0 {
		return nil, fmt.Errorf("firmware: manifest: no derivation or outputs")
	}
	return &m, nil
}

// ReadManifest reads the manifest of a build output directory or store
// entry (or a manifest.json itself).
func ReadManifest(path string) (*Manifest, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, ManifestName)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("firmware: %w", err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return m, nil
}

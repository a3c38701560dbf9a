package disk

import (
	"encoding/json"
	"errors"
	"fmt"
)

// MetadataFile is kiln.json: kiln's image builder puts it on the first
// (FAT) partition of every image it builds, and on each slot's boot
// partition.
const MetadataFile = "kiln.json"

// maxMetadata bounds how much of a kiln.json kiln reads.
const maxMetadata = 1 << 20

// ErrLayout means an image or a device has no usable A/B layout.
var ErrLayout = errors.New("no A/B layout")

// Metadata is kiln.json: what the image is and where its A/B slots are.
// The image builder writes it; `kiln image inspect`, updates and fleet
// status read it. Field order is the file's: changing it changes images.
type Metadata struct {
	Derivation string `json:"derivation"`
	Name       string `json:"name"`
	Version    string `json:"version"`
	Board      string `json:"board"`
	Table      string `json:"table"`
	DiskID     string `json:"disk_id"`
	// AB is the A/B mechanism (boards.ABTryboot, boards.ABUBootEnv); empty
	// for an image without Pi firmware, which uses autoboot.txt.
	AB         string          `json:"ab,omitempty"`
	Slots      []Slot          `json:"slots"`
	Partitions []MetaPartition `json:"partitions"`
}

// Slot is an A/B slot: its boot and root partition numbers.
type Slot struct {
	Name         string `json:"name"`
	Boot         int    `json:"boot,omitempty"`
	Root         int    `json:"root"`
	RootPartUUID string `json:"root_partuuid"`
}

// MetaPartition is one partition in kiln.json.
type MetaPartition struct {
	Number   int    `json:"number"`
	Name     string `json:"name"`
	PartUUID string `json:"partuuid"`
	Type     string `json:"type"`
	Label    string `json:"label,omitempty"`
	Slot     string `json:"slot,omitempty"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
}

// ParseMetadata parses kiln.json.
func ParseMetadata(b []byte) (*Metadata, error) {
	if len(b) > maxMetadata {
		return nil, fmt.Errorf("kiln.json: %d bytes (kiln reads at most %d)", len(b), maxMetadata)
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("kiln.json: %w", err)
	}
	return &m, nil
}

// ReadMetadata reads kiln.json from the FAT file system read by rd.
func ReadMetadata(rd ReadFunc) (*Metadata, error) {
	f, err := ReadFile(rd, MetadataFile, maxMetadata)
	if err != nil {
		return nil, err
	}
	return ParseMetadata(f.Data)
}

// ABSlots returns the two slots of an A/B image, checked: two named slots,
// each with a boot and a root partition, no partition shared.
func (m *Metadata) ABSlots() ([2]Slot, error) {
	var ab [2]Slot
	if len(m.Slots) != 2 {
		return ab, fmt.Errorf("%w: kiln.json has %d slots, not 2", ErrLayout, len(m.Slots))
	}
	seen := map[int]bool{}
	for i, s := range m.Slots {
		if s.Name == "" || s.Boot <= 0 || s.Root <= 0 || s.Boot > 255 || s.Root > 255 {
			return ab, fmt.Errorf("%w: kiln.json slot %d (%q) needs a name, a boot and a root partition", ErrLayout, i, s.Name)
		}
		if seen[s.Boot] || seen[s.Root] || s.Boot == s.Root {
			return ab, fmt.Errorf("%w: kiln.json slots share a partition", ErrLayout)
		}
		seen[s.Boot], seen[s.Root] = true, true
		ab[i] = s
	}
	if ab[0].Name == ab[1].Name {
		return ab, fmt.Errorf("%w: both kiln.json slots are named %q", ErrLayout, ab[0].Name)
	}
	return ab, nil
}

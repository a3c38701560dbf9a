package attest

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"sort"

	"kiln.dev/kiln/flash"
)

// Section status in a Comparison.
const (
	Identical    = "identical"
	Different    = "different"
	Resized      = "resized"
	OnlyRebuild  = "only in rebuild"
	OnlyArtifact = "only in artifact"
)

// SectionDiff compares one ELF section of a rebuild with a shipped artifact.
type SectionDiff struct {
	Name   string `json:"name"`
	Addr   uint64 `json:"addr"` // load address for allocated sections
	Size   uint64 `json:"size"`
	Status string `json:"status"`
	// Bytes is how many bytes differ; First is the address of the first.
	Bytes int    `json:"bytes,omitempty"`
	First uint64 `json:"first,omitempty"`
	// ArtifactSize is the artifact's size of a resized section.
	ArtifactSize uint64 `json:"artifact_size,omitempty"`
	// Files are the files that differ inside a partition's filesystem.
	Files []FileDiff `json:"files,omitempty"`
	// FilesNote says why Files could not be listed.
	FilesNote string `json:"files_note,omitempty"`
}

// Range is a run of addresses.
type Range struct {
	Addr uint64 `json:"addr"`
	Size uint64 `json:"size"`
}

// Comparison is what an audit found.
type Comparison struct {
	Format         string        `json:"format"` // "elf" or "image"
	Identical      bool          `json:"identical"`
	ArtifactSHA256 string        `json:"artifact_sha256"`
	RebuildSHA256  string        `json:"rebuild_sha256"`
	Sections       []SectionDiff `json:"sections"`
	// Outside are differing bytes that no section of the rebuild covers.
	Outside []Range `json:"outside,omitempty"`
	Note    string  `json:"note,omitempty"`
}

// Differing returns the sections that are not identical.
func (c *Comparison) Differing() []SectionDiff {
	var ds []SectionDiff
	for _, s := range c.Sections {
		if s.Status != Identical {
			ds = append(ds, s)
		}
	}
	return ds
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// loadAddr returns a section's load (physical) address: where its bytes
// sit in flash. On AVR and Cortex-M, .data is loaded after .text and copied
// to RAM at start; its VMA is the RAM address.
func loadAddr(f *elf.File, s *elf.Section) uint64 {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && s.Type != elf.SHT_NOBITS && s.Offset >= p.Off && s.Offset+s.Size <= p.Off+p.Filesz {
			return p.Paddr + (s.Offset - p.Off)
		}
	}
	return s.Addr
}

func sectionData(s *elf.Section) []byte {
	if s.Type == elf.SHT_NOBITS {
		return nil
	}
	b, err := s.Data()
	if err != nil {
		return nil
	}
	return b
}

// CompareELF compares a rebuilt ELF with a shipped one, section by section
// (by name).
func CompareELF(rebuilt, artifact []byte) (*Comparison, error) {
	c := &Comparison{Format: "elf", ArtifactSHA256: sha(artifact), RebuildSHA256: sha(rebuilt)}
	c.Identical = bytes.Equal(rebuilt, artifact)
	rf, err := elf.NewFile(bytes.NewReader(rebuilt))
	if err != nil {
		return nil, fmt.Errorf("attest: compare: rebuild: %w", err)
	}
	af, err := elf.NewFile(bytes.NewReader(artifact))
	if err != nil {
		return nil, fmt.Errorf("attest: compare: artifact is not an ELF file: %w", err)
	}
	seen := map[string]bool{}
	for _, rs := range rf.Sections {
		if rs.Type == elf.SHT_NULL {
			continue
		}
		seen[rs.Name] = true
		d := SectionDiff{Name: rs.Name, Addr: loadAddr(rf, rs), Size: rs.Size, Status: Identical}
		as := af.Section(rs.Name)
		switch {
		case as == nil:
			d.Status = OnlyRebuild
		case as.Size != rs.Size:
			d.Status, d.ArtifactSize = Resized, as.Size
		default:
			rd, ad := sectionData(rs), sectionData(as)
			for i := range rd {
				if i < len(ad) && rd[i] != ad[i] {
					if d.Bytes == 0 {
						d.First = d.Addr + uint64(i)
					}
					d.Bytes++
				}
			}
			if d.Bytes > 0 || loadAddr(af, as) != d.Addr || as.Type != rs.Type || as.Flags != rs.Flags {
				d.Status = Different
			}
		}
		c.Sections = append(c.Sections, d)
	}
	for _, as := range af.Sections {
		if as.Type != elf.SHT_NULL && !seen[as.Name] {
			c.Sections = append(c.Sections, SectionDiff{Name: as.Name, Addr: loadAddr(af, as), Size: as.Size, Status: OnlyArtifact})
		}
	}
	if !c.Identical && len(c.Differing()) == 0 {
		c.Note = "every section's contents match; the ELF headers or layout differ"
	}
	return c, nil
}

// byteAt finds the byte at addr in img.
func byteAt(img *flash.Image, addr uint64) (byte, bool) {
	segs := img.Segments
	i := sort.Search(len(segs), func(i int) bool { return segs[i].End() > addr })
	if i < len(segs) && uint64(segs[i].Addr) <= addr {
		return segs[i].Data[addr-uint64(segs[i].Addr)], true
	}
	return 0, false
}

// CompareImage compares the bytes a shipped image (a .hex, a .bin, or what
// a device holds) writes with the loadable bytes of a rebuilt ELF, and
// names the rebuild's sections the differences fall in.
func CompareImage(rebuiltELF []byte, artifact *flash.Image) (*Comparison, error) {
	rf, err := elf.NewFile(bytes.NewReader(rebuiltELF))
	if err != nil {
		return nil, fmt.Errorf("attest: compare: rebuild: %w", err)
	}
	rimg, err := flash.ParseELF("rebuild", bytes.NewReader(rebuiltELF))
	if err != nil {
		return nil, fmt.Errorf("attest: compare: rebuild: %w", err)
	}
	c := &Comparison{Format: "image", ArtifactSHA256: artifact.SHA256(), RebuildSHA256: rimg.SHA256()}
	// The sections that hold flash bytes, by load address.
	type span struct {
		lo, hi uint64
		idx    int
	}
	var spans []span
	for _, s := range rf.Sections {
		if s.Flags&elf.SHF_ALLOC == 0 || s.Type == elf.SHT_NOBITS || s.Size == 0 {
			continue
		}
		a := loadAddr(rf, s)
		spans = append(spans, span{a, a + s.Size, len(c.Sections)})
		c.Sections = append(c.Sections, SectionDiff{Name: s.Name, Addr: a, Size: s.Size, Status: Identical})
	}
	// Every address either image writes.
	var ivs [][2]uint64
	for _, img := range []*flash.Image{rimg, artifact} {
		for _, s := range img.Segments {
			ivs = append(ivs, [2]uint64{uint64(s.Addr), s.End()})
		}
	}
	sort.Slice(ivs, func(i, j int) bool { return ivs[i][0] < ivs[j][0] })
	var merged [][2]uint64
	for _, iv := range ivs {
		if n := len(merged); n > 0 && iv[0] <= merged[n-1][1] {
			merged[n-1][1] = max(merged[n-1][1], iv[1])
			continue
		}
		merged = append(merged, iv)
	}
	for _, iv := range merged {
		for a := iv[0]; a < iv[1]; a++ {
			rb, rok := byteAt(rimg, a)
			ab, aok := byteAt(artifact, a)
			if rok == aok && rb == ab {
				continue
			}
			in := false
			for _, sp := range spans {
				if a >= sp.lo && a < sp.hi {
					d := &c.Sections[sp.idx]
					if d.Bytes == 0 {
						d.First = a
					}
					d.Bytes++
					d.Status = Different
					in = true
					break
				}
			}
			if !in {
				if n := len(c.Outside); n > 0 && c.Outside[n-1].Addr+c.Outside[n-1].Size == a {
					c.Outside[n-1].Size++
				} else {
					c.Outside = append(c.Outside, Range{Addr: a, Size: 1})
				}
			}
		}
	}
	c.Identical = len(c.Differing()) == 0 && len(c.Outside) == 0
	return c, nil
}

// DiskPart is a named byte range of a disk image: a partition.
type DiskPart struct {
	Name        string
	Start, Size int64
}

// CompareDisk compares a rebuilt disk image with a shipped one region by
// region: the partition table area before the first partition, each
// partition, and whatever lies outside them. Offsets are bytes.
func CompareDisk(rebuilt, artifact io.ReaderAt, rebuiltSize, artifactSize int64, parts []DiskPart) (*Comparison, error) {
	c := &Comparison{Format: "disk"}
	ps := append([]DiskPart(nil), parts...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Start < ps[j].Start })
	var regions []DiskPart
	pos := int64(0)
	for i, p := range ps {
		if p.Start > pos {
			name := "unpartitioned"
			if i == 0 {
				name = "partition table"
			}
			regions = append(regions, DiskPart{Name: name, Start: pos, Size: p.Start - pos})
		}
		regions = append(regions, p)
		pos = max(pos, p.Start+p.Size)
	}
	if end := max(rebuiltSize, artifactSize); end > pos {
		regions = append(regions, DiskPart{Name: "unpartitioned", Start: pos, Size: end - pos})
	}
	rh, ah := sha256.New(), sha256.New()
	rbuf, abuf := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, r := range regions {
		d := SectionDiff{Name: r.Name, Addr: uint64(r.Start), Size: uint64(r.Size), Status: Identical}
		for off := r.Start; off < r.Start+r.Size; off += int64(len(rbuf)) {
			n := min(int64(len(rbuf)), r.Start+r.Size-off)
			rn, err := readAtMost(rebuilt, rbuf[:n], off, rebuiltSize)
			if err != nil {
				return nil, fmt.Errorf("attest: compare: rebuild: %w", err)
			}
			an, err := readAtMost(artifact, abuf[:n], off, artifactSize)
			if err != nil {
				return nil, fmt.Errorf("attest: compare: artifact: %w", err)
			}
			rh.Write(rbuf[:rn])
			ah.Write(abuf[:an])
			if rn == an && bytes.Equal(rbuf[:rn], abuf[:an]) {
				continue
			}
			for i := int64(0); i < n; i++ {
				rok, aok := i < int64(rn), i < int64(an)
				if rok == aok && (!rok || rbuf[i] == abuf[i]) {
					continue
				}
				if d.Bytes == 0 {
					d.First = uint64(off + i)
				}
				d.Bytes++
			}
		}
		if d.Bytes > 0 {
			d.Status = Different
		}
		c.Sections = append(c.Sections, d)
	}
	c.RebuildSHA256, c.ArtifactSHA256 = hex.EncodeToString(rh.Sum(nil)), hex.EncodeToString(ah.Sum(nil))
	c.Identical = len(c.Differing()) == 0 && rebuiltSize == artifactSize
	if rebuiltSize != artifactSize {
		c.Note = fmt.Sprintf("the rebuild is %d bytes, the artifact %d", rebuiltSize, artifactSize)
	}
	return c, nil
}

// readAtMost reads len(p) bytes at off, fewer past size.
func readAtMost(r io.ReaderAt, p []byte, off, size int64) (int, error) {
	if off >= size {
		return 0, nil
	}
	if rest := size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

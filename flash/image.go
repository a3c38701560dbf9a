package flash

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/marcinbor85/gohex"

	"kiln.dev/kiln/boards"
)

// Segment is a run of bytes at an address.
type Segment struct {
	Addr uint32
	Data []byte
}

// End returns the first address past the segment.
func (s Segment) End() uint64 { return uint64(s.Addr) + uint64(len(s.Data)) }

// Image is what a flasher writes: segments sorted by address, not overlapping.
type Image struct {
	Segments []Segment
	// Machine is the ELF machine the image was built for, when known
	// (elf.EM_NONE for HEX and BIN).
	Machine elf.Machine
	// Flags is the ELF header's e_flags (for AVR, avr-gcc's architecture
	// number in its low 7 bits: 5 for avr5, 6 for avr6); 0 for HEX and BIN.
	Flags uint32
	// Source names where the image came from, for messages.
	Source string
}

// Region is an address range on the device.
type Region struct {
	Addr uint32
	Size int
}

// Size returns the number of bytes the image writes.
func (img *Image) Size() int {
	n := 0
	for _, s := range img.Segments {
		n += len(s.Data)
	}
	return n
}

// Extent returns the smallest region that covers every segment.
func (img *Image) Extent() Region {
	if len(img.Segments) == 0 {
		return Region{}
	}
	first, last := img.Segments[0], img.Segments[len(img.Segments)-1]
	return Region{Addr: first.Addr, Size: int(last.End() - uint64(first.Addr))}
}

// Regions returns the regions the image writes, one per segment.
func (img *Image) Regions() []Region {
	rs := make([]Region, len(img.Segments))
	for i, s := range img.Segments {
		rs[i] = Region{Addr: s.Addr, Size: len(s.Data)}
	}
	return rs
}

// SHA256 returns the hex SHA-256 of the segments' bytes in address order.
func (img *Image) SHA256() string {
	h := sha256.New()
	for _, s := range img.Segments {
		h.Write(s.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Flat returns the image's extent as one buffer, gaps filled with fill.
func (img *Image) Flat(fill byte) (uint32, []byte) {
	ext := img.Extent()
	buf := bytes.Repeat([]byte{fill}, ext.Size)
	for _, s := range img.Segments {
		copy(buf[s.Addr-ext.Addr:], s.Data)
	}
	return ext.Addr, buf
}

// normalize sorts segments, merges adjacent ones and rejects overlaps.
func (img *Image) normalize() error {
	segs := img.Segments[:0]
	for _, s := range img.Segments {
		if len(s.Data) > 0 {
			segs = append(segs, s)
		}
	}
	sort.SliceStable(segs, func(i, j int) bool { return segs[i].Addr < segs[j].Addr })
	var out []Segment
	for _, s := range segs {
		if n := len(out); n > 0 {
			prev := &out[n-1]
			switch {
			case uint64(s.Addr) < prev.End():
				return fmt.Errorf("%w: %s: segments overlap at 0x%x", ErrBadImage, img.Source, s.Addr)
			case uint64(s.Addr) == prev.End():
				prev.Data = append(prev.Data[:len(prev.Data):len(prev.Data)], s.Data...)
				continue
			}
		}
		out = append(out, Segment{Addr: s.Addr, Data: append([]byte(nil), s.Data...)})
	}
	img.Segments = out
	return nil
}

// NewImage builds an image from segments, sorting and merging them.
func NewImage(source string, segs ...Segment) (*Image, error) {
	img := &Image{Segments: segs, Source: source}
	if err := img.normalize(); err != nil {
		return nil, err
	}
	return img, nil
}

// ParseHex reads Intel HEX. Errors name the line.
func ParseHex(name string, r io.Reader) (*Image, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// gohex reports a bad record without its line; find the line first so the
	// error can point at it.
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r \t")
		if line == "" {
			continue
		}
		if err := checkHexLine(line); err != nil {
			return nil, fmt.Errorf("%w: %s:%d: %v", ErrBadImage, name, i+1, err)
		}
	}
	mem := gohex.NewMemory()
	if err := mem.ParseIntelHex(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadImage, name, err)
	}
	img := &Image{Source: name}
	for _, s := range mem.GetDataSegments() {
		img.Segments = append(img.Segments, Segment{Addr: s.Address, Data: s.Data})
	}
	if err := img.normalize(); err != nil {
		return nil, err
	}
	return img, nil
}

func checkHexLine(line string) error {
	if line[0] != ':' {
		return errors.New("record does not start with ':'")
	}
	b, err := hex.DecodeString(line[1:])
	if err != nil {
		return fmt.Errorf("not hex: %v", err)
	}
	if len(b) < 5 || len(b) != int(b[0])+5 {
		return errors.New("record length does not match its byte count")
	}
	var sum byte
	for _, c := range b {
		sum += c
	}
	if sum != 0 {
		want := byte(0) - (sum - b[len(b)-1])
		return fmt.Errorf("checksum 0x%02x, want 0x%02x", b[len(b)-1], want)
	}
	if b[3] > 5 {
		return fmt.Errorf("unknown record type 0x%02x", b[3])
	}
	return nil
}

// maxSegment bounds an ELF segment: the largest flash kiln writes is a few
// MiB, so a header claiming more is hostile or broken, not firmware.
const maxSegment = 64 << 20

// ParseELF reads the loadable segments of an ELF file at their physical
// (load) addresses, which is what a flasher writes.
func ParseELF(name string, r io.ReaderAt) (*Image, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not an ELF file: %v", ErrBadImage, name, err)
	}
	img := &Image{Source: name, Machine: f.Machine}
	// debug/elf does not keep e_flags: read it from the header.
	off := int64(36)
	if f.Class == elf.ELFCLASS64 {
		off = 48
	}
	var fl [4]byte
	if _, err := r.ReadAt(fl[:], off); err != nil {
		return nil, fmt.Errorf("%w: %s: ELF header: %v", ErrBadImage, name, err)
	}
	img.Flags = f.ByteOrder.Uint32(fl[:])
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Filesz == 0 {
			continue
		}
		if p.Filesz > maxSegment || p.Memsz > maxSegment {
			return nil, fmt.Errorf("%w: %s: segment at 0x%x is %d bytes (%d in memory): more than any flash kiln writes", ErrBadImage, name, p.Paddr, p.Filesz, p.Memsz)
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return nil, fmt.Errorf("%w: %s: segment at 0x%x: %v", ErrBadImage, name, p.Paddr, err)
		}
		if p.Paddr > 0xffffffff {
			return nil, fmt.Errorf("%w: %s: segment address 0x%x is past 32 bits", ErrBadImage, name, p.Paddr)
		}
		img.Segments = append(img.Segments, Segment{Addr: uint32(p.Paddr), Data: data})
	}
	if err := img.normalize(); err != nil {
		return nil, err
	}
	return img, nil
}

// ParseBin wraps raw bytes as an image at addr.
func ParseBin(name string, data []byte, addr uint32) (*Image, error) {
	return NewImage(name, Segment{Addr: addr, Data: data})
}

// LoadOptions says how to read a file whose format does not carry an address.
type LoadOptions struct {
	// Address is where a .bin is written. Required for .bin.
	Address *uint32
}

// MaxFirmware is the largest firmware file kiln loads (far above any
// microcontroller's flash; a disk image goes through internal/op's disk
// path instead).
const MaxFirmware = 64 << 20

// Load reads a .hex, .elf, .bin, .dfu or a build output directory (its
// FirmwareFile).
func Load(path string, opts LoadOptions) (*Image, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		if path, err = FirmwareFile(path); err != nil {
			return nil, err
		}
	}
	data, err := ReadFirmware(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data, opts)
}

// ReadFirmware reads a firmware file once, refusing one larger than
// MaxFirmware.
func ReadFirmware(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFirmware+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxFirmware {
		return nil, fmt.Errorf("%w: %s: more than %d MiB: not firmware", ErrBadImage, path, MaxFirmware>>20)
	}
	return data, nil
}

// Parse reads an artifact's bytes: ELF (by its magic), .dfu, Intel HEX, or
// raw binary at opts.Address. name is for messages and its extension.
func Parse(name string, data []byte, opts LoadOptions) (*Image, error) {
	ext := strings.ToLower(filepath.Ext(name))
	switch {
	case bytes.HasPrefix(data, []byte("\x7fELF")):
		return ParseELF(name, bytes.NewReader(data))
	case ext == ".dfu":
		return ParseDfu(name, data, opts.Address)
	case ext == ".hex" || ext == ".ihex" || (len(data) > 0 && data[0] == ':' && ext != ".bin"):
		return ParseHex(name, bytes.NewReader(data))
	case ext == ".bin" || opts.Address != nil:
		if opts.Address == nil {
			return nil, fmt.Errorf("%s: a .bin has no address: give --address", name)
		}
		return ParseBin(name, data, *opts.Address)
	}
	return nil, fmt.Errorf("%w: %s: not a .hex, .elf or .bin file", ErrBadImage, name)
}

// FirmwareFile is the file of a build output directory a flasher writes:
// firmware.elf (it carries the machine and architecture), else
// firmware.hex.
func FirmwareFile(dir string) (string, error) {
	for _, name := range []string{"firmware.elf", "firmware.hex"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: no firmware.elf or firmware.hex in the directory", dir)
}

// archMachine is the ELF machine each board architecture runs.
var archMachine = map[string]elf.Machine{
	"avr":      elf.EM_AVR,
	"cortex-m": elf.EM_ARM,
	"armv7":    elf.EM_ARM,
	"aarch64":  elf.EM_AARCH64,
}

// efAVRMach masks the architecture in an AVR ELF's e_flags (binutils'
// EF_AVR_MACH).
const efAVRMach = 0x7f

// Check holds the image against the board before any I/O: not empty, built
// for the board's CPU, inside the application area, clear of the bootloader.
func (img *Image) Check(b *boards.Board) error {
	if img.Size() == 0 {
		return fmt.Errorf("%w: %s: the image is empty", ErrBadImage, img.Source)
	}
	if img.Machine != elf.EM_NONE && archMachine[b.Arch] != img.Machine {
		return fmt.Errorf("%w: %s: ELF for %v, but %s is %s (%v)", ErrBadImage, img.Source, img.Machine, b.Name, b.Arch, archMachine[b.Arch])
	}
	if img.Machine == elf.EM_AVR && b.AVRArch != "" {
		want, err := b.AVRArchNumber()
		if err != nil {
			return err
		}
		if got := img.Flags & efAVRMach; got != want {
			return fmt.Errorf("%w: %s: ELF for avr%d, but %s (%s) is %s", ErrBadImage, img.Source, got, b.Name, b.MCU, b.AVRArch)
		}
	}
	for _, s := range img.Segments {
		if b.Bootloader != nil && b.Bootloader.Overlaps(s.Addr, len(s.Data)) {
			return fmt.Errorf("%w: %s: segment 0x%x-0x%x overlaps the bootloader at 0x%x-0x%x", ErrBadImage, img.Source,
				s.Addr, s.End(), b.Bootloader.Base, b.Bootloader.End())
		}
		if !b.Flash.Contains(s.Addr, len(s.Data)) {
			return fmt.Errorf("%w: %s: segment 0x%x-0x%x is outside %s's application flash 0x%x-0x%x (%d bytes)", ErrBadImage, img.Source,
				s.Addr, s.End(), b.Name, b.Flash.Base, b.Flash.End(), b.Flash.Size)
		}
	}
	return nil
}

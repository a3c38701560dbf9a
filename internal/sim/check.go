package sim

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/flash"
)

// ErrNoLoadable: an ELF file has no loadable segment with bytes in it (a
// relocatable object, or a program linked with everything NOLOAD).
var ErrNoLoadable = errors.New("ELF has no loadable segment")

// Artifact is a firmware image with what its files say about its target.
type Artifact struct {
	Image *flash.Image
	// Path is the file the image came from; SHA256 that file's hash.
	Path   string
	SHA256 string
	// Board is the board a build output directory's manifest names.
	Board string
	// MCU is the part an AVR ELF names in its device-info note
	// (.note.gnu.avr.deviceinfo, written by avr-libc's start-up code).
	MCU string
}

// LoadArtifact reads a .hex, .elf, .bin (at addr) or a build output
// directory (firmware.elf, else firmware.hex, with manifest.json).
func LoadArtifact(path string, addr *uint32) (*Artifact, error) {
	a := &Artifact{Path: path}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		m, err := firmware.ReadManifest(path)
		if err != nil {
			return nil, fmt.Errorf("sim: %s: not a build output directory: %w", path, err)
		}
		a.Board = m.Board
		a.Path = ""
		for _, name := range []string{firmware.ELFName, firmware.HEXName} {
			if _, err := os.Stat(filepath.Join(path, name)); err == nil {
				a.Path = filepath.Join(path, name)
				break
			}
		}
		if a.Path == "" {
			return nil, fmt.Errorf("sim: %s: no %s or %s in the directory", path, firmware.ELFName, firmware.HEXName)
		}
	}
	data, err := os.ReadFile(a.Path)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	sum := sha256.Sum256(data)
	a.SHA256 = hex.EncodeToString(sum[:])
	if a.Image, err = flash.Load(a.Path, flash.LoadOptions{Address: addr}); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if bytes.HasPrefix(data, []byte("\x7fELF")) {
		if a.Image.Size() == 0 {
			return nil, fmt.Errorf("sim: %s: %w", a.Path, ErrNoLoadable)
		}
		if f, err := elf.NewFile(bytes.NewReader(data)); err == nil {
			a.MCU = avrDevice(f)
		}
	}
	return a, nil
}

// avrDevice returns the device an avr-libc program names in its
// .note.gnu.avr.deviceinfo section ("" if it has none). The note's
// descriptor is seven words (flash, SRAM and EEPROM start and size, the
// string table's length), the name's offset into the string table, then
// the table.
func avrDevice(f *elf.File) string {
	s := f.Section(".note.gnu.avr.deviceinfo")
	if s == nil {
		return ""
	}
	b, err := s.Data()
	if err != nil || len(b) < 12 {
		return ""
	}
	namesz := binary.LittleEndian.Uint32(b[0:])
	desc := b[12+(namesz+3)&^3:]
	if len(desc) < 32 {
		return ""
	}
	off := binary.LittleEndian.Uint32(desc[28:])
	table := desc[32:]
	if int(off) >= len(table) {
		return ""
	}
	name, _, _ := bytes.Cut(table[off:], []byte{0})
	return string(name)
}

// Check holds an artifact against the board and its simulator model before
// anything runs. Errors wrap ErrNoModel, ErrWrongBoard, ErrNoLoadable or
// flash.ErrBadImage.
func Check(b *boards.Board, a *Artifact) error {
	if b.Sim == nil {
		why := "its board file has no [sim] table"
		if b.Arch != "avr" && b.Arch != "cortex-m" {
			why = fmt.Sprintf("it is %s: kiln run simulates microcontrollers", b.Arch)
		}
		return fmt.Errorf("sim: %s: %w: %s", b.Name, ErrNoModel, why)
	}
	if a.Board != "" && a.Board != b.Name {
		built, err := boards.Get(a.Board)
		if err != nil || built.MCU != b.MCU || built.CPUHz != b.CPUHz {
			return fmt.Errorf("sim: %s: %w: built for %s, not %s", a.Path, ErrWrongBoard, a.Board, b.Name)
		}
	}
	if a.MCU != "" && b.Arch == "avr" && !strings.EqualFold(a.MCU, b.MCU) {
		return fmt.Errorf("sim: %s: %w: built for the %s (its ELF says so), but %s has the %s", a.Path, ErrWrongBoard, a.MCU, b.Name, b.MCU)
	}
	img := a.Image
	if img.Size() == 0 {
		return fmt.Errorf("sim: %s: %w: the image is empty", a.Path, flash.ErrBadImage)
	}
	if err := img.Check(b); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	if b.Arch == "cortex-m" {
		return checkCortexM(b, a)
	}
	return nil
}

// checkCortexM reads the vector table at the start of flash: the initial
// stack pointer must lie in the model's RAM (+1: it is the end of the
// stack) and the reset vector in the model's flash, in Thumb state.
func checkCortexM(b *boards.Board, a *Artifact) error {
	ram, fl := b.RAM, &b.Flash
	if b.Sim.RAM != nil {
		ram = b.Sim.RAM
	}
	if b.Sim.Flash != nil {
		fl = b.Sim.Flash
	}
	base, flat := a.Image.Flat(0xff)
	if base != b.Flash.Base || len(flat) < 8 {
		return fmt.Errorf("sim: %s: %w: no vector table at 0x%x, where %s starts", a.Path, ErrWrongBoard, b.Flash.Base, b.Name)
	}
	sp := binary.LittleEndian.Uint32(flat[0:])
	pc := binary.LittleEndian.Uint32(flat[4:])
	if ram != nil && (sp <= ram.Base || uint64(sp) > ram.End()) {
		return fmt.Errorf("sim: %s: %w: the initial stack pointer 0x%08x is outside the RAM of QEMU's %s model (0x%08x-0x%08x)",
			a.Path, ErrWrongBoard, sp, b.Sim.Machine, ram.Base, ram.End())
	}
	if pc&1 == 0 || !fl.Contains(pc&^1, 2) {
		return fmt.Errorf("sim: %s: %w: the reset vector 0x%08x is not Thumb code in %s's flash", a.Path, ErrWrongBoard, pc, b.Name)
	}
	return nil
}

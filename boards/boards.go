// Package boards holds kiln's board definitions: what the hardware is, as data.
//
// A board file is TOML, embedded in the binary. A board may name another in
// `inherits`; the parent's fields are loaded first and the child's keys
// overwrite them. Every board is validated when it is loaded, so a board that
// reaches a builder or a flasher is complete and consistent.
package boards

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

//go:embed *.toml
var files embed.FS

// ErrUnknown is returned by Get for a board name that has no definition.
var ErrUnknown = errors.New("unknown board")

// Memory is an address range with an optional page (erase/program unit) size
// and, for flash with unequal sectors, a DfuSe-style layout such as
// "04*016Kg,01*064Kg,03*128Kg".
type Memory struct {
	Base   uint32 `toml:"base" json:"base"`
	Size   uint32 `toml:"size" json:"size"`
	Page   uint32 `toml:"page,omitempty" json:"page,omitempty"`
	Layout string `toml:"layout,omitempty" json:"layout,omitempty"`
}

// End returns the first address past the range.
func (m Memory) End() uint64 { return uint64(m.Base) + uint64(m.Size) }

// Contains reports whether [addr, addr+n) lies inside the range.
func (m Memory) Contains(addr uint32, n int) bool {
	return uint64(addr) >= uint64(m.Base) && uint64(addr)+uint64(n) <= m.End()
}

// Overlaps reports whether [addr, addr+n) shares a byte with the range.
func (m Memory) Overlaps(addr uint32, n int) bool {
	return m.Size > 0 && n > 0 && uint64(addr) < m.End() && uint64(addr)+uint64(n) > uint64(m.Base)
}

// Board describes one kind of target hardware.
type Board struct {
	Name        string `toml:"name" json:"name"`
	Inherits    string `toml:"inherits,omitempty" json:"inherits,omitempty"`
	Description string `toml:"description" json:"description"`
	Arch        string `toml:"arch" json:"arch"` // avr | cortex-m | aarch64 | armv7
	MCU         string `toml:"mcu,omitempty" json:"mcu,omitempty"`
	// AVRArch is the avr-gcc architecture of an AVR's MCU ("avr5" for the
	// ATmega328P, "avr6" for the ATmega2560): an ELF's e_flags carry it,
	// so firmware built for another AVR is refused before it is written.
	AVRArch string `toml:"avr_arch,omitempty" json:"avr_arch,omitempty"`
	CPU     string `toml:"cpu,omitempty" json:"cpu,omitempty"` // -mcpu for cortex-m
	FPU     string `toml:"fpu,omitempty" json:"fpu,omitempty"`
	SoC     string `toml:"soc,omitempty" json:"soc,omitempty"`
	DTB     string `toml:"dtb,omitempty" json:"dtb,omitempty"`
	CPUHz   int64  `toml:"cpu_hz,omitempty" json:"cpu_hz,omitempty"`

	// Flash is the application area: the bootloader is excluded.
	Flash      Memory  `toml:"flash" json:"flash"`
	Bootloader *Memory `toml:"bootloader,omitempty" json:"bootloader,omitempty"`
	EEPROM     *Memory `toml:"eeprom,omitempty" json:"eeprom,omitempty"`
	RAM        *Memory `toml:"ram,omitempty" json:"ram,omitempty"`

	// Signature is the AVR device signature ("1e950f") or the STM32 product ID ("0x433").
	Signature string   `toml:"signature,omitempty" json:"signature,omitempty"`
	Protocol  string   `toml:"protocol" json:"protocol"`                       // default flashing protocol
	Protocols []string `toml:"protocols,omitempty" json:"protocols,omitempty"` // all it supports; defaults to [Protocol]
	Baud      int      `toml:"baud,omitempty" json:"baud,omitempty"`
	Reset     string   `toml:"reset,omitempty" json:"reset,omitempty"` // dtr | rts | 1200bps | gpio:NAME | none
	USB       []string `toml:"usb,omitempty" json:"usb,omitempty"`     // VID:PID for port auto-detection

	// RPi says how a Raspberry Pi boots from its SD card; nil for other boards.
	RPi *RPiBoot `toml:"rpi,omitempty" json:"rpi,omitempty"`

	// Provision is where kiln station writes each device's provisioning
	// record; nil when the board declares none.
	Provision *Provision `toml:"provision,omitempty" json:"provision,omitempty"`

	// Sim says how `kiln run` simulates the board; nil: it cannot. It is
	// not part of the board's JSON, which derivations hash: how a board is
	// simulated does not change what is built for it.
	Sim *Sim `toml:"sim,omitempty" json:"-"`

	// Arduino maps the board to its definition in an Arduino core's
	// boards.txt, for recipes of kind "arduino"; nil when it has none. Not
	// in the board's JSON either: an arduino recipe's derivation holds the
	// board ID and options it resolved.
	Arduino *ArduinoBoard `toml:"arduino,omitempty" json:"-"`
}

// Sim is how a board is simulated: by simavr (the board's MCU, at its
// cpu_hz) or by a QEMU machine whose chip is close enough to the board's.
// A QEMU model differs from the board in documented ways (Limits); where
// its memories are smaller than the board's, RAM and Flash give the
// model's, and images that need more are refused.
type Sim struct {
	Engine string `toml:"engine" json:"engine"` // simavr | qemu
	// Machine is the qemu-system-arm machine (-M).
	Machine string `toml:"machine,omitempty" json:"machine,omitempty"`
	// UART is the index of the board's console USART among the machine's
	// serial ports (QEMU) or the UART number (simavr, "0").
	UART int `toml:"uart,omitempty" json:"uart,omitempty"`
	// RAM and Flash are the model's memories where they are smaller than
	// the board's.
	RAM   *Memory `toml:"ram,omitempty" json:"ram,omitempty"`
	Flash *Memory `toml:"flash,omitempty" json:"flash,omitempty"`
	// Limits say where the model differs from the board, for users.
	Limits []string `toml:"limits,omitempty" json:"limits,omitempty"`
}

// ArduinoBoard is a board ID in an Arduino core's boards.txt ("uno") with
// the menu options that select this hardware ({cpu = "atmega328old"}).
type ArduinoBoard struct {
	Board   string            `toml:"board" json:"board"`
	Options map[string]string `toml:"options,omitempty" json:"options,omitempty"`
}

// A/B mechanisms: who decides, at boot, which slot of an A/B image runs.
const (
	// ABTryboot is the Pi 4/400/CM4/5 EEPROM bootloader's tryboot:
	// autoboot.txt with tryboot_a_b=1 and boot_partition per [all] and
	// [tryboot] section, armed by `reboot '0 tryboot'`, the one-shot flag
	// cleared by the firmware before it starts, so any failure boots the
	// committed slot.
	ABTryboot = "tryboot"
	// ABUBootEnv is U-Boot (Debian's u-boot-rpi, started by the firmware as
	// the kernel) running kiln's boot.scr, which picks boot_slot from
	// uboot.env and counts trial boots (upgrade_available, bootcount,
	// bootlimit), falling back to boot_fallback when the limit is passed.
	ABUBootEnv = "uboot-env"
)

var abMechanisms = map[string]bool{ABTryboot: true, ABUBootEnv: true}

// RPiBoot is what a Raspberry Pi's boot firmware reads from the card.
type RPiBoot struct {
	// Firmware are the files of Debian's raspi-firmware (usr/lib/raspi-firmware)
	// the boot ROM or EEPROM loader reads from the boot partition: bootcode.bin,
	// start.elf and fixup.dat on Pi 3-class boards, start4.elf and fixup4.dat
	// on the Pi 4 family.
	Firmware []string `toml:"firmware" json:"firmware"`
	// AB lists the A/B mechanisms this board's firmware has (ABTryboot,
	// ABUBootEnv); the first is the default.
	AB []string `toml:"ab" json:"ab"`
	// UBoot is the u-boot-rpi platform (usr/lib/u-boot/<platform>/u-boot.bin)
	// for ABUBootEnv.
	UBoot string `toml:"uboot,omitempty" json:"uboot,omitempty"`
}

// ErrNoABMechanism is returned (wrapped) by HasAB for a mechanism the
// board's boot firmware does not have.
var ErrNoABMechanism = errors.New("the board's firmware has no such A/B mechanism")

// HasAB checks that the board's firmware can decide A/B boots with mechanism.
func (b *Board) HasAB(mechanism string) error {
	if b.RPi == nil {
		return fmt.Errorf("board %s: %w: %q (it is not a Raspberry Pi)", b.Name, ErrNoABMechanism, mechanism)
	}
	for _, m := range b.RPi.AB {
		if m == mechanism {
			return nil
		}
	}
	return fmt.Errorf("board %s: %w: %q (it has %s)", b.Name, ErrNoABMechanism, mechanism, strings.Join(b.RPi.AB, ", "))
}

// Provision is the region that holds a device's provisioning record: whole
// pages of the application flash (firmware must leave them free) or EEPROM.
type Provision struct {
	Region string `toml:"region" json:"region"` // flash | eeprom
	Base   uint32 `toml:"base" json:"base"`
	Size   uint32 `toml:"size" json:"size"`
}

var (
	arches    = map[string]bool{"avr": true, "cortex-m": true, "aarch64": true, "armv7": true}
	protocols = map[string]bool{"stk500v1": true, "avr109": true, "stk500v2": true, "stm32-uart": true, "dfuse": true, "ssh": true, "blockdev": true, "swd": true}
)

// KnownProtocols lists the protocol names a board file may use, sorted.
// flash/device's back-end table must have an entry for each (its test
// checks).
func KnownProtocols() []string {
	var ps []string
	for p := range protocols {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// Supports reports whether the board can be flashed with protocol p.
func (b *Board) Supports(p string) bool {
	for _, q := range b.Protocols {
		if q == p {
			return true
		}
	}
	return false
}

// AVRSignature returns the three signature bytes of an AVR board.
func (b *Board) AVRSignature() ([3]byte, error) {
	var sig [3]byte
	if len(b.Signature) != 6 {
		return sig, fmt.Errorf("board %s: signature %q is not 3 hex bytes", b.Name, b.Signature)
	}
	for i := range sig {
		v, err := strconv.ParseUint(b.Signature[2*i:2*i+2], 16, 8)
		if err != nil {
			return sig, fmt.Errorf("board %s: signature %q: %w", b.Name, b.Signature, err)
		}
		sig[i] = byte(v)
	}
	return sig, nil
}

// AVRArchNumber returns the AVR architecture number avr-gcc writes into an
// ELF's e_flags (EF_AVR_MACH): 5 for "avr5", 6 for "avr6".
func (b *Board) AVRArchNumber() (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(b.AVRArch, "avr"), 10, 8)
	if !strings.HasPrefix(b.AVRArch, "avr") || err != nil || n == 0 {
		return 0, fmt.Errorf("board %s: avr_arch %q: want avr-gcc's architecture of %s, such as avr5", b.Name, b.AVRArch, b.MCU)
	}
	return uint32(n), nil
}

// ProductID returns the STM32 product ID of a Cortex-M board ("0x433" → 0x433).
func (b *Board) ProductID() (uint16, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(b.Signature, "0x"), 16, 16)
	if err != nil {
		return 0, fmt.Errorf("board %s: product id %q: %w", b.Name, b.Signature, err)
	}
	return uint16(v), nil
}

// USBIDs parses the board's VID:PID list.
func (b *Board) USBIDs() ([][2]uint16, error) {
	var ids [][2]uint16
	for _, s := range b.USB {
		vid, pid, ok := strings.Cut(s, ":")
		v, err1 := strconv.ParseUint(vid, 16, 16)
		p, err2 := strconv.ParseUint(pid, 16, 16)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("board %s: usb id %q is not VID:PID in hex", b.Name, s)
		}
		ids = append(ids, [2]uint16{uint16(v), uint16(p)})
	}
	return ids, nil
}

// Validate checks that the board is complete and consistent.
func (b *Board) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("board %s: %s", b.Name, fmt.Sprintf(format, a...))
	}
	if b.Name == "" {
		return errors.New("board: missing name")
	}
	if !arches[b.Arch] {
		return bad("unknown arch %q (want avr, cortex-m, aarch64 or armv7)", b.Arch)
	}
	if !protocols[b.Protocol] {
		return bad("unknown protocol %q", b.Protocol)
	}
	for _, p := range b.Protocols {
		if !protocols[p] {
			return bad("unknown protocol %q in protocols", p)
		}
	}
	if !b.Supports(b.Protocol) {
		return bad("protocol %q is not in protocols %v", b.Protocol, b.Protocols)
	}
	if b.Arch == "avr" {
		if _, err := b.AVRArchNumber(); err != nil {
			return err
		}
	}
	if _, err := b.USBIDs(); err != nil {
		return err
	}
	switch b.Arch {
	case "avr", "cortex-m":
		if b.MCU == "" || b.CPUHz <= 0 {
			return bad("a microcontroller board needs mcu and cpu_hz")
		}
		if b.Flash.Size == 0 || b.Flash.Page == 0 {
			return bad("flash needs size and page")
		}
		if b.Flash.Size%b.Flash.Page != 0 && b.Flash.Layout == "" {
			return bad("flash size %d is not a multiple of the page size %d", b.Flash.Size, b.Flash.Page)
		}
		if b.Flash.Layout != "" {
			if _, err := b.Flash.Pages(); err != nil {
				return bad("flash: %v", err)
			}
		}
		if b.Bootloader != nil && b.Flash.Overlaps(b.Bootloader.Base, int(b.Bootloader.Size)) {
			return bad("bootloader 0x%x+%d overlaps the application area", b.Bootloader.Base, b.Bootloader.Size)
		}
		if b.Baud <= 0 {
			return bad("missing baud")
		}
	}
	switch b.Arch {
	case "avr":
		if _, err := b.AVRSignature(); err != nil {
			return err
		}
	case "cortex-m":
		if b.CPU == "" {
			return bad("a cortex-m board needs cpu")
		}
		if _, err := b.ProductID(); err != nil {
			return err
		}
	case "aarch64", "armv7":
		if b.DTB == "" {
			return bad("a Raspberry Pi board needs dtb")
		}
		if r := b.RPi; r != nil {
			if len(r.Firmware) == 0 || len(r.AB) == 0 {
				return bad("rpi needs firmware and ab")
			}
			for _, f := range r.Firmware {
				if f == "" || strings.ContainsAny(f, "/\\") {
					return bad("rpi firmware %q is not a plain file name", f)
				}
			}
			for _, m := range r.AB {
				if !abMechanisms[m] {
					return bad("unknown A/B mechanism %q (want %s or %s)", m, ABTryboot, ABUBootEnv)
				}
				if m == ABUBootEnv && r.UBoot == "" {
					return bad("A/B mechanism %s needs rpi.uboot (the u-boot-rpi platform)", m)
				}
			}
		}
	}
	if p := b.Provision; p != nil {
		switch {
		case p.Size < 64:
			return bad("provision region of %d bytes is too small for a record (64 at least)", p.Size)
		case p.Region == "flash" && !b.Flash.Contains(p.Base, int(p.Size)):
			return bad("provision 0x%x+%d is outside the application flash", p.Base, p.Size)
		case p.Region == "flash" && b.Flash.Layout == "" && (p.Base%b.Flash.Page != 0 || p.Size%b.Flash.Page != 0):
			return bad("provision 0x%x+%d is not whole flash pages of %d bytes", p.Base, p.Size, b.Flash.Page)
		case p.Region == "eeprom" && (b.EEPROM == nil || !b.EEPROM.Contains(p.Base, int(p.Size))):
			return bad("provision 0x%x+%d is outside the EEPROM", p.Base, p.Size)
		case p.Region != "flash" && p.Region != "eeprom":
			return bad("provision region %q (want flash or eeprom)", p.Region)
		}
	}
	if a := b.Arduino; a != nil && a.Board == "" {
		return bad("arduino needs board (the board ID in the core's boards.txt)")
	}
	if sm := b.Sim; sm != nil {
		switch {
		case sm.Engine == "simavr" && b.Arch != "avr":
			return bad("sim engine simavr runs AVR boards only")
		case sm.Engine == "qemu" && b.Arch != "cortex-m":
			return bad("sim engine qemu runs Cortex-M boards only")
		case sm.Engine == "qemu" && sm.Machine == "":
			return bad("sim engine qemu needs a machine")
		case sm.Engine != "simavr" && sm.Engine != "qemu":
			return bad("unknown sim engine %q (want simavr or qemu)", sm.Engine)
		}
	}
	switch {
	case b.Reset == "", b.Reset == "dtr", b.Reset == "rts", b.Reset == "1200bps", b.Reset == "none":
	case strings.HasPrefix(b.Reset, "gpio:") && len(b.Reset) > 5:
	default:
		return bad("unknown reset %q (want dtr, rts, 1200bps, gpio:NAME or none)", b.Reset)
	}
	return nil
}

// Parse decodes one board file. parent, if not nil, supplies inherited fields.
func Parse(name string, data []byte, parent *Board) (*Board, error) {
	var b Board
	if parent != nil {
		b = *parent
		b.Protocols = nil
		b.USB = append([]string(nil), parent.USB...)
		if parent.Arduino != nil {
			a := ArduinoBoard{Board: parent.Arduino.Board, Options: map[string]string{}}
			for k, v := range parent.Arduino.Options {
				a.Options[k] = v
			}
			b.Arduino = &a
		}
	}
	md, err := toml.Decode(string(data), &b)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("%s:%d:%d: %s", name, perr.Position.Line, perr.Position.Col, perr.Message)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("%s: unknown key %q", name, und[0].String())
	}
	if parent != nil && !md.IsDefined("protocols") {
		b.Protocols = append([]string(nil), parent.Protocols...)
	}
	if len(b.Protocols) == 0 {
		b.Protocols = []string{b.Protocol}
	}
	b.Inherits = ""
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &b, nil
}

// Get loads the named board.
func Get(name string) (*Board, error) {
	return get(name, 0)
}

func get(name string, depth int) (*Board, error) {
	if depth > 8 {
		return nil, fmt.Errorf("board %s: inheritance is too deep", name)
	}
	data, err := files.ReadFile(name + ".toml")
	if err != nil || strings.ContainsAny(name, "/\\") {
		return nil, fmt.Errorf("%w %q (see kiln boards)", ErrUnknown, name)
	}
	var head struct {
		Inherits string `toml:"inherits"`
	}
	if _, err := toml.Decode(string(data), &head); err != nil {
		return nil, fmt.Errorf("boards/%s.toml: %w", name, err)
	}
	var parent *Board
	if head.Inherits != "" {
		if parent, err = get(head.Inherits, depth+1); err != nil {
			return nil, fmt.Errorf("board %s inherits: %w", name, err)
		}
	}
	b, err := Parse("boards/"+name+".toml", data, parent)
	if err != nil {
		return nil, err
	}
	if b.Name != name {
		return nil, fmt.Errorf("boards/%s.toml: name is %q", name, b.Name)
	}
	return b, nil
}

// Names lists every board kiln knows, sorted.
func Names() []string {
	ents, _ := fs.Glob(files, "*.toml")
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, strings.TrimSuffix(e, ".toml"))
	}
	sort.Strings(names)
	return names
}

// All loads every board.
func All() ([]*Board, error) {
	var all []*Board
	for _, n := range Names() {
		b, err := Get(n)
		if err != nil {
			return nil, err
		}
		all = append(all, b)
	}
	return all, nil
}

package stm32

import (
	"errors"
	"fmt"
)

// Family is one STM32 line as its system-memory bootloader and its debug
// port present it. The table is shared by the clients (flash/stm32 over the
// ROM bootloader, flash/swd over SWD: where the unique ID is, how flash is
// programmed) and by their device models (stm32test, swdtest), so none of
// them can disagree about a chip.
type Family struct {
	Name string
	// PIDs are the product IDs Get ID answers for the line.
	PIDs []uint16
	// Version is the bootloader version the ROM reports (0x22 means 2.2).
	Version byte
	// ExtErase: the ROM erases with Extended Erase (0x44), not Erase (0x43).
	ExtErase bool
	// HalfWord: programming a half-word that is not erased fails (PGERR)
	// instead of clearing bits (the F1's flash controller).
	HalfWord bool
	// InfoBase is the start of the device-ID block; the 96-bit unique ID
	// is at InfoBase+UIDOff, the flash size register (KiB) at
	// InfoBase+SizeOff.
	InfoBase, UIDOff, SizeOff uint32
	// RAMUsed is the RAM the bootloader keeps for itself.
	RAMUsed uint32
	// Controller is the flash controller's design as a debugger drives it:
	// "f1" (FPEC: equal pages, half-word programming) or "f4" (sectors,
	// PSIZE parallelism); FlashRegs is its register base (RM0008, RM0368).
	Controller string
	FlashRegs  uint32
	// DPIDR is what the line's SW-DP answers to a DPIDR read.
	DPIDR uint32
}

// SizeAddr is where the family keeps its flash size in KiB (u16).
func (f Family) SizeAddr() uint32 { return f.InfoBase + f.SizeOff }

// UIDAddr is where the family keeps its 96-bit unique ID.
func (f Family) UIDAddr() uint32 { return f.InfoBase + f.UIDOff }

// Families are the STM32 lines kiln knows (AN2606's product IDs).
var Families = []Family{
	{Name: "STM32F1", PIDs: []uint16{0x410, 0x412, 0x414, 0x418, 0x420, 0x428, 0x430}, // low, medium, high, XL density, connectivity, value lines
		Version: 0x22, HalfWord: true, InfoBase: 0x1FFFF7E0, UIDOff: 8, SizeOff: 0, RAMUsed: 0x200,
		Controller: "f1", FlashRegs: 0x40022000, DPIDR: 0x1BA01477},
	{Name: "STM32F2/F4", PIDs: []uint16{0x411, 0x413, 0x419, 0x421, 0x423, 0x431, 0x433, 0x434, 0x441, 0x458, 0x463},
		Version: 0x31, ExtErase: true, InfoBase: 0x1FFF7A10, UIDOff: 0, SizeOff: 0x12, RAMUsed: 0x3000,
		Controller: "f4", FlashRegs: 0x40023C00, DPIDR: 0x2BA01477},
}

// ErrUnknownChip means a product ID is in no family kiln knows: kiln does
// not guess how to program it.
var ErrUnknownChip = errors.New("unknown STM32 product ID")

// FamilyOf returns the family of product ID pid.
func FamilyOf(pid uint16) (Family, error) {
	for _, f := range Families {
		for _, p := range f.PIDs {
			if p == pid {
				return f, nil
			}
		}
	}
	return Family{}, fmt.Errorf("stm32: product 0x%03x: %w", pid, ErrUnknownChip)
}

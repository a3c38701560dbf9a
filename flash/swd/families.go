package swd

import (
	"errors"
	"fmt"
)

// Family is an STM32 family as data: where its identity lives and which
// flash controller it has. The same table serves the client and the target
// model in swdtest, so an unknown chip is an error in both.
type Family struct {
	Name string
	// Controller is the flash controller design: "f1" (FPEC, half-word
	// programming, equal pages) or "f4" (sectors, PSIZE).
	Controller string
	// Flash is the flash controller's register base.
	Flash uint32
	// SizeReg holds the flash size in KiB (u16); UID the 96-bit unique ID.
	SizeReg, UID uint32
	// DPIDR is what the family's SW-DP answers to a DPIDR read.
	DPIDR uint32
	// Devices maps DBGMCU_IDCODE DEV_ID to the line's name.
	Devices map[uint16]string
}

// DBGMCU_IDCODE is where STM32F1 and F4 parts name themselves.
const DBGMCUIDCode = 0xE0042000

// Families lists the STM32 families kiln flashes over SWD (RM0008, RM0368;
// OpenOCD's stm32f1x.c and stm32f2x.c for the IDs).
var Families = []Family{
	{
		Name: "STM32F1", Controller: "f1", Flash: 0x40022000, SizeReg: 0x1FFFF7E0, UID: 0x1FFFF7E8, DPIDR: 0x1BA01477,
		Devices: map[uint16]string{0x410: "STM32F10x medium-density", 0x412: "STM32F10x low-density", 0x414: "STM32F10x high-density",
			0x418: "STM32F105/107 connectivity", 0x420: "STM32F100 value line", 0x430: "STM32F10x XL-density"},
	},
	{
		Name: "STM32F4", Controller: "f4", Flash: 0x40023C00, SizeReg: 0x1FFF7A22, UID: 0x1FFF7A10, DPIDR: 0x2BA01477,
		Devices: map[uint16]string{0x413: "STM32F405/407/415/417", 0x419: "STM32F42x/43x", 0x421: "STM32F446", 0x423: "STM32F401xB/C",
			0x431: "STM32F411", 0x433: "STM32F401xD/E", 0x441: "STM32F412", 0x458: "STM32F410"},
	},
}

// ErrUnknownChip means the chip's DEV_ID is in no family kiln knows.
var ErrUnknownChip = errors.New("unknown chip")

// FamilyOf returns the family of a DEV_ID.
func FamilyOf(dev uint16) (*Family, error) {
	for i := range Families {
		if _, ok := Families[i].Devices[dev]; ok {
			return &Families[i], nil
		}
	}
	return nil, fmt.Errorf("swd: DEV_ID 0x%03x: %w", dev, ErrUnknownChip)
}

package swd

import (
	"kiln.dev/kiln/flash/stm32"
)

// Family is an STM32 family as data, from the one table flash/stm32 keeps
// for every STM32 client and model: where its identity lives and which
// flash controller it has.
type Family = stm32.Family

// DBGMCUIDCode is where STM32F1 and F4 parts name themselves (DBGMCU_IDCODE).
const DBGMCUIDCode = 0xE0042000

// ErrUnknownChip means the chip's DEV_ID is in no family kiln knows.
var ErrUnknownChip = stm32.ErrUnknownChip

// FamilyOf returns the family of a DEV_ID.
func FamilyOf(dev uint16) (*Family, error) {
	f, err := stm32.FamilyOf(dev)
	if err != nil {
		return nil, err
	}
	return &f, nil
}

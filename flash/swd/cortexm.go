package swd

import (
	"context"
	"fmt"
	"time"
)

// Cortex-M debug registers (ARMv7-M ARM, C1.6).
const (
	regDHCSR = 0xE000EDF0
	regDEMCR = 0xE000EDFC
	regAIRCR = 0xE000ED0C

	dhcsrKey     = 0xA05F << 16
	dhcsrDebugEn = 1 << 0
	dhcsrHalt    = 1 << 1
	dhcsrSHalt   = 1 << 17
	dhcsrSReset  = 1 << 25

	demcrVCCoreReset = 1 << 0
	demcrTrcEna      = 1 << 24

	aircrKey         = 0x05FA << 16
	aircrSysResetReq = 1 << 2
)

// resetHalt resets the chip and stops the core before its first
// instruction: DEMCR.VC_CORERESET, then AIRCR.SYSRESETREQ.
func resetHalt(ctx context.Context, a link) error {
	if err := a.write32(ctx, regDHCSR, dhcsrKey|dhcsrDebugEn|dhcsrHalt); err != nil {
		return err
	}
	if err := a.write32(ctx, regDEMCR, demcrTrcEna|demcrVCCoreReset); err != nil {
		return err
	}
	// The reset may cut the answer to this write short: that is expected.
	if err := a.write32(ctx, regAIRCR, aircrKey|aircrSysResetReq); err != nil {
		if err := a.connect(ctx); err != nil {
			return fmt.Errorf("swd: reconnect after reset: %w", err)
		}
	}
	return waitHalt(ctx, a)
}

func waitHalt(ctx context.Context, a link) error {
	deadline := time.Now().Add(time.Second)
	for {
		v, err := a.read32(ctx, regDHCSR)
		if err != nil {
			return err
		}
		if v&dhcsrSHalt != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swd: the core did not halt (DHCSR 0x%08x)", v)
		}
		if err := a.write32(ctx, regDHCSR, dhcsrKey|dhcsrDebugEn|dhcsrHalt); err != nil {
			return err
		}
		if err := sleep(ctx, time.Millisecond); err != nil {
			return err
		}
	}
}

// resetRun lets the chip start the new firmware: vector catch off, debug off,
// system reset.
func resetRun(ctx context.Context, a link) error {
	if err := a.write32(ctx, regDEMCR, 0); err != nil {
		return err
	}
	if err := a.write32(ctx, regDHCSR, dhcsrKey); err != nil {
		return err
	}
	_ = a.write32(ctx, regAIRCR, aircrKey|aircrSysResetReq) // the reset may eat the answer
	return nil
}

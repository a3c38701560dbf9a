package swdtest

import (
	"fmt"
	"math/bits"
)

// core is the Cortex-M core of the chip model: its registers as the debug
// port reaches them (DCRSR/DCRDR, ST-LINK's register commands), and an
// interpreter for the Thumb and Thumb-2 instructions a flash loader uses
// (data processing, loads and stores, compares and branches, BKPT). Code
// that uses anything else stops the core in a lockup, which the host sees
// as a core that halted without reaching its breakpoint.
type core struct {
	r     [16]uint32
	xpsr  uint32
	dcrdr uint32
	dfsr  uint32
	// fault names the instruction that stopped the core, if one did.
	fault string
}

// Flags in xPSR.
const (
	flagN = 1 << 31
	flagZ = 1 << 30
	flagC = 1 << 29
	flagV = 1 << 28
)

// maxSteps bounds one run: a loader that has not reached its breakpoint by
// then is left running (the host times out, as on a real chip).
const maxSteps = 50_000_000

// reg returns register n as DCRSR numbers them (0-15, 16 = xPSR, 17 MSP,
// 18 PSP).
func (k *core) reg(n uint32) uint32 {
	switch {
	case n < 16:
		return k.r[n]
	case n == 16:
		return k.xpsr
	case n == 17, n == 18:
		return k.r[13]
	}
	return 0
}

func (k *core) setReg(n, v uint32) {
	switch {
	case n < 16:
		k.r[n] = v
	case n == 16:
		k.xpsr = v
	case n == 17, n == 18:
		k.r[13] = v
	}
}

// run executes from PC until BKPT, a fault or maxSteps; it reports whether
// the core halted.
func (c *Chip) run() bool {
	k := &c.cpu
	k.fault = ""
	for i := 0; i < maxSteps; i++ {
		halted, err := c.step()
		if err != nil {
			k.fault = err.Error()
			c.lockup = true
			return true
		}
		if halted {
			k.dfsr |= 1 << 1 // BKPT
			return true
		}
	}
	return false
}

// load and store go through the chip's bus, waiting out a busy flash
// controller as the AHB stalls the core.
func (c *Chip) load(addr, n uint32) (uint32, error) {
	for {
		v, ok, wait := c.read(addr&^3, addr, n)
		if wait {
			c.clock.Advance(c.busyUntil - c.clock.Now())
			continue
		}
		if !ok || addr%n != 0 {
			return 0, fmt.Errorf("bus fault reading 0x%08x", addr)
		}
		return v >> (8 * (addr & 3)) & (uint32(1)<<(8*n) - 1 | -uint32(n>>2)), nil
	}
}

func (c *Chip) store(addr, n, v uint32) error {
	for {
		if n < 4 {
			v &= uint32(1)<<(8*n) - 1
		}
		ok, wait := c.write(addr, n, v)
		if wait {
			c.clock.Advance(c.busyUntil - c.clock.Now())
			continue
		}
		if !ok || addr%n != 0 {
			return fmt.Errorf("bus fault writing 0x%08x", addr)
		}
		return nil
	}
}

func (k *core) nz(v uint32) {
	k.xpsr &^= flagN | flagZ
	if v == 0 {
		k.xpsr |= flagZ
	}
	k.xpsr |= v & flagN
}

// addc is AddWithCarry, setting all four flags when set is true.
func (k *core) addc(a, b, carry uint32, set bool) uint32 {
	r, c := bits.Add32(a, b, carry)
	if set {
		k.nz(r)
		k.xpsr &^= flagC | flagV
		if c != 0 {
			k.xpsr |= flagC
		}
		if (a^r)&(b^r)&0x80000000 != 0 {
			k.xpsr |= flagV
		}
	}
	return r
}

func (k *core) cond(c uint32) bool {
	n, z, cf, v := k.xpsr&flagN != 0, k.xpsr&flagZ != 0, k.xpsr&flagC != 0, k.xpsr&flagV != 0
	var r bool
	switch c >> 1 {
	case 0:
		r = z
	case 1:
		r = cf
	case 2:
		r = n
	case 3:
		r = v
	case 4:
		r = cf && !z
	case 5:
		r = n == v
	case 6:
		r = n == v && !z
	case 7:
		return true
	}
	if c&1 != 0 {
		return !r
	}
	return r
}

// expandImm is ThumbExpandImm (ARMv7-M A5.3.2).
func expandImm(imm12 uint32) uint32 {
	if imm12>>10 == 0 {
		b := imm12 & 0xff
		switch (imm12 >> 8) & 3 {
		case 0:
			return b
		case 1:
			return b<<16 | b
		case 2:
			return b<<24 | b<<8
		}
		return b<<24 | b<<16 | b<<8 | b
	}
	return bits.RotateLeft32(0x80|imm12&0x7f, -int(imm12>>7))
}

// step executes one instruction; it reports a BKPT.
func (c *Chip) step() (bool, error) {
	k := &c.cpu
	pc := k.r[15] &^ 1
	hw, err := c.load(pc, 2)
	if err != nil {
		return false, err
	}
	if hw>>11 >= 0x1d { // a 32-bit instruction
		lo, err := c.load(pc+2, 2)
		if err != nil {
			return false, err
		}
		k.r[15] = pc + 4
		return false, c.step32(pc, hw, lo)
	}
	k.r[15] = pc + 2
	next := pc + 4 // the PC an instruction reads
	r := &k.r
	lo3 := func(s uint32) uint32 { return (hw >> s) & 7 }
	switch {
	case hw == 0xbf00: // NOP
	case hw>>8 == 0xbe: // BKPT
		k.r[15] = pc
		return true, nil
	case hw>>11 == 0x00: // LSLS Rd, Rm, #imm
		sh := (hw >> 6) & 31
		v := r[lo3(3)]
		if sh > 0 {
			k.xpsr &^= flagC
			if v>>(32-sh)&1 != 0 {
				k.xpsr |= flagC
			}
		}
		r[lo3(0)] = v << sh
		k.nz(r[lo3(0)])
	case hw>>11 == 0x01: // LSRS Rd, Rm, #imm
		sh := (hw >> 6) & 31
		if sh == 0 {
			sh = 32
		}
		v := uint64(r[lo3(3)])
		k.xpsr &^= flagC
		if v>>(sh-1)&1 != 0 {
			k.xpsr |= flagC
		}
		r[lo3(0)] = uint32(v >> sh)
		k.nz(r[lo3(0)])
	case hw>>9 == 0x0c, hw>>9 == 0x0d, hw>>9 == 0x0e, hw>>9 == 0x0f: // ADDS/SUBS reg or imm3
		b := r[lo3(6)]
		if hw&(1<<10) != 0 {
			b = lo3(6)
		}
		if hw&(1<<9) != 0 {
			r[lo3(0)] = k.addc(r[lo3(3)], ^b, 1, true)
		} else {
			r[lo3(0)] = k.addc(r[lo3(3)], b, 0, true)
		}
	case hw>>11 == 0x04: // MOVS Rd, #imm8
		r[lo3(8)] = hw & 0xff
		k.nz(r[lo3(8)])
	case hw>>11 == 0x05: // CMP Rn, #imm8
		k.addc(r[lo3(8)], ^(hw & 0xff), 1, true)
	case hw>>11 == 0x06: // ADDS Rdn, #imm8
		r[lo3(8)] = k.addc(r[lo3(8)], hw&0xff, 0, true)
	case hw>>11 == 0x07: // SUBS Rdn, #imm8
		r[lo3(8)] = k.addc(r[lo3(8)], ^(hw & 0xff), 1, true)
	case hw>>10 == 0x10: // data processing, registers
		d, m := &r[lo3(0)], r[lo3(3)]
		switch (hw >> 6) & 0xf {
		case 0x0:
			*d &= m
			k.nz(*d)
		case 0x1:
			*d ^= m
			k.nz(*d)
		case 0x8: // TST
			k.nz(*d & m)
		case 0x9: // RSBS #0
			*d = k.addc(^m, 0, 1, true)
		case 0xa: // CMP
			k.addc(*d, ^m, 1, true)
		case 0xb: // CMN
			k.addc(*d, m, 0, true)
		case 0xc:
			*d |= m
			k.nz(*d)
		case 0xd:
			*d *= m
			k.nz(*d)
		case 0xe: // BICS
			*d &^= m
			k.nz(*d)
		case 0xf:
			*d = ^m
			k.nz(*d)
		default:
			return false, fmt.Errorf("unsupported instruction 0x%04x at 0x%08x", hw, pc)
		}
	case hw>>8 == 0x44: // ADD Rdn, Rm (high registers)
		dn := (hw>>4)&8 | hw&7
		if dn == 15 {
			return false, fmt.Errorf("unsupported instruction 0x%04x at 0x%08x", hw, pc)
		}
		m := r[(hw>>3)&15]
		if (hw>>3)&15 == 15 {
			m = next
		}
		r[dn] += m
	case hw>>8 == 0x46: // MOV Rd, Rm
		dn := (hw>>4)&8 | hw&7
		m := r[(hw>>3)&15]
		if dn == 15 {
			k.r[15] = m &^ 1
		} else {
			r[dn] = m
		}
	case hw>>8 == 0x47 && hw&0x87 == 0: // BX Rm
		k.r[15] = r[(hw>>3)&15] &^ 1
	case hw>>11 == 0x09: // LDR Rt, [PC, #imm8]
		v, err := c.load((next&^3)+(hw&0xff)*4, 4)
		if err != nil {
			return false, err
		}
		r[lo3(8)] = v
	case hw>>11 >= 0x0c && hw>>11 <= 0x11: // STR/LDR/STRB/LDRB/STRH/LDRH Rt, [Rn, #imm5]
		op := hw >> 11
		size := map[uint32]uint32{0x0c: 4, 0x0d: 4, 0x0e: 1, 0x0f: 1, 0x10: 2, 0x11: 2}[op]
		addr := r[lo3(3)] + ((hw>>6)&31)*size
		if op&1 == 0 {
			if err := c.store(addr, size, r[lo3(0)]); err != nil {
				return false, err
			}
		} else {
			v, err := c.load(addr, size)
			if err != nil {
				return false, err
			}
			r[lo3(0)] = v
		}
	case hw>>12 == 0xd && (hw>>8)&0xf < 0xe: // B<cond>
		if k.cond((hw >> 8) & 0xf) {
			k.r[15] = next + uint32(int32(int8(hw&0xff))*2)
		}
	case hw>>11 == 0x1c: // B
		off := int32(hw&0x7ff) << 21 >> 20
		k.r[15] = next + uint32(off)
	case hw&0xf500 == 0xb100: // CBZ/CBNZ
		off := (hw>>9&1)<<6 | (hw>>3&31)<<1
		if (r[lo3(0)] == 0) != (hw&(1<<11) != 0) {
			k.r[15] = next + off
		}
	default:
		return false, fmt.Errorf("unsupported instruction 0x%04x at 0x%08x", hw, pc)
	}
	return false, nil
}

// step32 executes the Thumb-2 instructions flash loaders use.
func (c *Chip) step32(pc, hw, lo uint32) error {
	k := &c.cpu
	r := &k.r
	rn, rd := hw&15, (lo>>8)&15
	unsupported := fmt.Errorf("unsupported instruction 0x%04x%04x at 0x%08x", hw, lo, pc)
	switch {
	case hw&0xfa00 == 0xf000 && lo&0x8000 == 0: // data processing, modified immediate
		imm := expandImm((hw>>10&1)<<11 | (lo>>12&7)<<8 | lo&0xff)
		set := hw&(1<<4) != 0
		var v uint32
		switch (hw >> 5) & 0xf {
		case 0x0: // AND / TST
			v = r[rn] & imm
			if set {
				k.nz(v)
			}
			if rd == 15 {
				return nil
			}
		case 0x1: // BIC
			v = r[rn] &^ imm
		case 0x2: // ORR / MOV
			if rn == 15 {
				v = imm
			} else {
				v = r[rn] | imm
			}
		case 0x8: // ADD / CMN
			v = k.addc(r[rn], imm, 0, set)
			if rd == 15 {
				return nil
			}
		case 0xd: // SUB / CMP
			v = k.addc(r[rn], ^imm, 1, set)
			if rd == 15 {
				return nil
			}
		default:
			return unsupported
		}
		if set && (hw>>5)&0xf < 8 {
			k.nz(v)
		}
		r[rd] = v
	case hw&0xff7f == 0xf85f: // LDR Rt, [PC, #±imm12]
		base := (pc + 4) &^ 3
		addr := base + lo&0xfff
		if hw&(1<<7) == 0 {
			addr = base - lo&0xfff
		}
		v, err := c.load(addr, 4)
		if err != nil {
			return err
		}
		r[lo>>12] = v
	case hw&0xff80 == 0xf880 && rn != 15: // STRB/STRH/STR/LDRB/LDRH/LDR Rt, [Rn, #imm12]
		size := uint32(1) << ((hw >> 5) & 3)
		addr := r[rn] + lo&0xfff
		if hw&(1<<4) != 0 {
			v, err := c.load(addr, size)
			if err != nil {
				return err
			}
			r[lo>>12] = v
		} else if err := c.store(addr, size, r[lo>>12]); err != nil {
			return err
		}
	default:
		return unsupported
	}
	return nil
}

package swdtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"sync"
	"time"

	"kiln.dev/kiln/flash"
)

// Faults injects the trouble a bench sees. Probabilities are per AP access
// (Wait, Fault) or per packet (Lost); the counts are packets.
type Faults struct {
	Seed int64
	// Wait makes an AP access answer WAIT for longer than the probe retries.
	Wait float64
	// Fault makes an AP access answer FAULT (and set STICKYERR).
	Fault float64
	// Lost loses a packet's answer after the probe has carried it out.
	Lost float64
	// UnplugAfter unplugs the probe after that many packets (0: never).
	UnplugAfter int
	// ResetAfter resets the target (power-on reset) after that many packets.
	ResetAfter int
}

// Probe is a CMSIS-DAP v2 probe model in front of a Chip: the command set
// OpenOCD and kiln use, answered as ARM's reference firmware does (posted AP
// reads resolved by the probe, WAIT retried up to the configured count).
type Probe struct {
	Chip   *Chip
	Serial string
	// PacketSize is what DAP_Info reports (64 for full-speed probes, 512 for
	// high-speed DAPLink); 0 means 64.
	PacketSize int
	Faults     Faults
	// PacketTime is the USB round trip the model adds to its clock per
	// packet (125 µs: a high-speed microframe).
	PacketTime time.Duration

	mu        sync.Mutex
	rng       *rand.Rand
	waitRetry int
	packets   int
	unplugged bool
	// Packets counts the command packets carried.
	Packets int
}

// NewProbe puts a probe in front of chip.
func NewProbe(chip *Chip, serial string) *Probe {
	return &Probe{Chip: chip, Serial: serial, PacketTime: 125 * time.Microsecond}
}

// Unplug makes every later exchange fail as if the probe left the bus.
func (p *Probe) Unplug() {
	p.mu.Lock()
	p.unplugged = true
	p.mu.Unlock()
}

func (p *Probe) packetSize() int {
	if p.PacketSize == 0 {
		return 64
	}
	return p.PacketSize
}

// Exchange carries out one command packet.
func (p *Probe) Exchange(ctx context.Context, cmd []byte) ([]byte, error) {
	return p.carry(ctx, func() []byte {
		if len(cmd) > p.packetSize() {
			return []byte{0xff}
		}
		return p.run(cmd)
	})
}

// carry runs one packet's work under the probe's lock with the packet-level
// faults: unplugging, a target reset, a lost answer.
func (p *Probe) carry(ctx context.Context, work func() []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rng == nil {
		p.rng = rand.New(rand.NewSource(p.Faults.Seed))
		p.waitRetry = 64
	}
	p.packets++
	p.Packets = p.packets
	if p.Faults.UnplugAfter > 0 && p.packets > p.Faults.UnplugAfter {
		p.unplugged = true
	}
	if p.unplugged {
		return nil, fmt.Errorf("swdtest: probe %s unplugged: %w", p.Serial, flash.ErrNoDevice)
	}
	if p.Faults.ResetAfter > 0 && p.packets == p.Faults.ResetAfter {
		p.Chip.Reset()
	}
	p.Chip.clock.Advance(p.PacketTime)
	resp := work()
	if p.Faults.Lost > 0 && p.rng.Float64() < p.Faults.Lost {
		return nil, fmt.Errorf("swdtest: answer lost: %w", flash.ErrNoAnswer)
	}
	return resp, nil
}

func (p *Probe) run(cmd []byte) []byte {
	if len(cmd) == 0 {
		return []byte{0xff}
	}
	id := cmd[0]
	arg := cmd[1:]
	ok := []byte{id, 0}
	switch id {
	case 0x00:
		if len(arg) < 1 {
			return []byte{0xff}
		}
		return append([]byte{id}, p.info(arg[0])...)
	case 0x01: // HostStatus
		return ok
	case 0x02: // Connect
		if len(arg) < 1 || arg[0] > 1 {
			return []byte{id, 0}
		}
		return []byte{id, 1}
	case 0x03, 0x13, 0x09, 0x11: // Disconnect, SWD_Configure, Delay, SWJ_Clock
		return ok
	case 0x04: // TransferConfigure
		if len(arg) >= 3 {
			p.waitRetry = int(binary.LittleEndian.Uint16(arg[1:]))
		}
		return ok
	case 0x05:
		return p.transfer(arg)
	case 0x06:
		return p.transferBlock(arg)
	case 0x07:
		return []byte{id}
	case 0x08: // WriteABORT
		if len(arg) < 5 {
			return []byte{id, 0xff}
		}
		p.Chip.DP(false, 0, binary.LittleEndian.Uint32(arg[1:]))
		return ok
	case 0x0A: // ResetTarget: no device-specific sequence
		return []byte{id, 0, 0}
	case 0x10: // SWJ_Pins
		return []byte{id, 0x80 | 0x02}
	case 0x12: // SWJ_Sequence
		if len(arg) < 1 {
			return []byte{id, 0xff}
		}
		n := int(arg[0])
		if n == 0 {
			n = 256
		}
		if ones(arg[1:], n) >= 50 {
			p.Chip.LineReset()
		}
		return ok
	}
	return []byte{0xff}
}

// ones is the longest run of 1 bits in the first n bits of seq, LSB first.
func ones(seq []byte, n int) int {
	run, best := 0, 0
	for i := 0; i < n && i/8 < len(seq); i++ {
		if seq[i/8]>>(i%8)&1 == 1 {
			run++
			best = max(best, run)
		} else {
			run = 0
		}
	}
	return best
}

func (p *Probe) info(id byte) []byte {
	str := func(s string) []byte { return append([]byte{byte(len(s) + 1)}, append([]byte(s), 0)...) }
	switch id {
	case 0x01:
		return str("kiln")
	case 0x02:
		return str("kiln CMSIS-DAP model")
	case 0x03:
		return str(p.Serial)
	case 0x04:
		return str("2.1.0")
	case 0x09:
		return str("1.0")
	case 0xF0:
		return []byte{1, 0x01}
	case 0xFE:
		return []byte{1, 4}
	case 0xFF:
		return []byte{2, byte(p.packetSize()), byte(p.packetSize() >> 8)}
	}
	return []byte{0}
}

// access runs one register access with the probe's WAIT retries and the
// injected faults.
func (p *Probe) access(req byte, v uint32) (uint32, int) {
	ap, read, addr := req&1 != 0, req&2 != 0, req&0x0C
	p.Chip.clock.Advance(12 * time.Microsecond) // ~46 bits at 4 MHz
	if !ap {
		return p.Chip.DP(read, addr, v)
	}
	if p.Faults.Wait > 0 && p.rng.Float64() < p.Faults.Wait {
		return 0, AckWait
	}
	if p.Faults.Fault > 0 && p.rng.Float64() < p.Faults.Fault {
		p.Chip.mu.Lock()
		p.Chip.sticky |= 1 << 5
		p.Chip.mu.Unlock()
		return 0, AckFault
	}
	for i := 0; ; i++ {
		r, ack := p.Chip.AP(read, addr, v)
		if ack != AckWait || i >= p.waitRetry {
			return r, ack
		}
		p.Chip.clock.Advance(12 * time.Microsecond)
	}
}

func (p *Probe) transfer(arg []byte) []byte {
	if len(arg) < 2 {
		return []byte{0x05, 0, 0}
	}
	count := int(arg[1])
	rest := arg[2:]
	out := []byte{0x05, 0, 0}
	var mask uint32 = 0xffffffff
	done, ack := 0, AckOK
	for ; done < count; done++ {
		if len(rest) < 1 {
			ack = AckNone
			break
		}
		req := rest[0]
		rest = rest[1:]
		var v uint32
		if req&2 == 0 || req&(1<<4) != 0 {
			if len(rest) < 4 {
				ack = AckNone
				break
			}
			v = binary.LittleEndian.Uint32(rest)
			rest = rest[4:]
		}
		switch {
		case req&(1<<5) != 0 && req&2 == 0: // match mask
			mask = v
			continue
		case req&(1<<4) != 0 && req&2 != 0: // value match
			var r uint32
			matched := false
			for i := 0; i <= 8 && !matched; i++ {
				r, ack = p.access(req&0x0F, 0)
				matched = ack == AckOK && r&mask == v
			}
			if ack == AckOK && !matched {
				out[2] = AckOK | 0x10
				out[1] = byte(done)
				return out
			}
		default:
			var r uint32
			r, ack = p.access(req&0x0F, v)
			if ack == AckOK && req&2 != 0 {
				out = binary.LittleEndian.AppendUint32(out, r)
			}
		}
		if ack != AckOK {
			break
		}
	}
	out[1], out[2] = byte(done), byte(ack)
	return out
}

func (p *Probe) transferBlock(arg []byte) []byte {
	if len(arg) < 4 {
		return []byte{0x06, 0, 0, 0}
	}
	count := int(binary.LittleEndian.Uint16(arg[1:]))
	req := arg[3]
	data := arg[4:]
	out := []byte{0x06, 0, 0, 0}
	done, ack := 0, AckOK
	for ; done < count; done++ {
		var v uint32
		if req&2 == 0 {
			if len(data) < 4 {
				ack = AckNone
				break
			}
			v = binary.LittleEndian.Uint32(data)
			data = data[4:]
		}
		var r uint32
		r, ack = p.access(req&0x0F, v)
		if ack != AckOK {
			break
		}
		if req&2 != 0 {
			out = binary.LittleEndian.AppendUint32(out, r)
		}
	}
	binary.LittleEndian.PutUint16(out[1:], uint16(done))
	out[3] = byte(ack)
	return out
}

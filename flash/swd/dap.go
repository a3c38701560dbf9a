package swd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"kiln.dev/kiln/flash"
)

// Transport carries one CMSIS-DAP command packet to the probe and returns the
// probe's answer to it.
type Transport interface {
	Exchange(ctx context.Context, cmd []byte) ([]byte, error)
}

// CMSIS-DAP command IDs (ARM CMSIS-DAP, DAP.h).
const (
	cmdInfo              = 0x00
	cmdHostStatus        = 0x01
	cmdConnect           = 0x02
	cmdDisconnect        = 0x03
	cmdTransferConfigure = 0x04
	cmdTransfer          = 0x05
	cmdTransferBlock     = 0x06
	cmdTransferAbort     = 0x07
	cmdWriteAbort        = 0x08
	cmdDelay             = 0x09
	cmdResetTarget       = 0x0A
	cmdSWJPins           = 0x10
	cmdSWJClock          = 0x11
	cmdSWJSequence       = 0x12
	cmdSWDConfigure      = 0x13
)

// DAP_Info IDs.
const (
	infoVendor     = 0x01
	infoProduct    = 0x02
	infoSerial     = 0x03
	infoProtocol   = 0x04
	infoFirmware   = 0x09
	infoCaps       = 0xF0
	infoPacketCnt  = 0xFE
	infoPacketSize = 0xFF
)

// Transfer request bits.
const (
	reqAP   = 1 << 0
	reqRead = 1 << 1
)

// SWD acknowledgements as CMSIS-DAP reports them.
const (
	ackOK     = 1
	ackWait   = 2
	ackFault  = 4
	ackNoAck  = 7
	ackParity = 8
)

var (
	// ErrWait means the target kept answering WAIT after the probe's retries.
	ErrWait = errors.New("target answered WAIT")
	// ErrFault means the target answered FAULT: a sticky error is set.
	ErrFault = errors.New("target answered FAULT")
	// ErrNoAck means the target did not answer at all (not connected, not
	// powered, or the line needs a reset).
	ErrNoAck = errors.New("no acknowledgement from the target")
	// ErrParity means the probe saw a parity error in the target's data.
	ErrParity = errors.New("SWD parity error")
	// ErrProtocol means the probe's answer does not follow CMSIS-DAP.
	ErrProtocol = errors.New("malformed CMSIS-DAP answer")
)

// ackErr turns a transfer's last acknowledgement into its sentinel.
func ackErr(ack byte) error {
	switch {
	case ack&ackParity != 0:
		return ErrParity
	case ack&7 == ackWait:
		return ErrWait
	case ack&7 == ackFault:
		return ErrFault
	case ack&7 == ackOK:
		return nil
	}
	return ErrNoAck
}

// DAP is a CMSIS-DAP probe.
type DAP struct {
	t      Transport
	packet int // bytes per command and per answer
}

// op is one DP or AP register access in a DAP_Transfer.
type op struct {
	ap    bool
	read  bool
	addr  uint8 // A[3:2] as 0x0, 0x4, 0x8, 0xC
	value uint32
}

func (o op) request() byte {
	r := o.addr & 0x0C
	if o.ap {
		r |= reqAP
	}
	if o.read {
		r |= reqRead
	}
	return r
}

func (d *DAP) call(ctx context.Context, cmd []byte) ([]byte, error) {
	resp, err := d.t.Exchange(ctx, cmd)
	// Commands other than transfers may simply be sent again when their
	// answer is lost; a transfer's retry is the ADI layer's decision.
	for i := 0; i < 3 && errors.Is(err, flash.ErrNoAnswer) && cmd[0] != cmdTransfer && cmd[0] != cmdTransferBlock; i++ {
		resp, err = d.t.Exchange(ctx, cmd)
	}
	if err != nil {
		return nil, err
	}
	if len(resp) == 0 || resp[0] != cmd[0] {
		return nil, fmt.Errorf("swd: command 0x%02x answered with % x: %w", cmd[0], head(resp), ErrProtocol)
	}
	return resp, nil
}

func head(b []byte) []byte {
	if len(b) > 8 {
		return b[:8]
	}
	return b
}

// status runs a command whose answer is one status byte.
func (d *DAP) status(ctx context.Context, cmd ...byte) error {
	resp, err := d.call(ctx, cmd)
	if err != nil {
		return err
	}
	if len(resp) < 2 || resp[1] != 0 {
		return fmt.Errorf("swd: command 0x%02x failed (status % x): %w", cmd[0], head(resp[1:]), ErrProtocol)
	}
	return nil
}

// Info asks for one DAP_Info item; an empty answer means the probe has none.
func (d *DAP) Info(ctx context.Context, id byte) ([]byte, error) {
	resp, err := d.call(ctx, []byte{cmdInfo, id})
	if err != nil {
		return nil, err
	}
	if len(resp) < 2 || int(resp[1]) > len(resp)-2 {
		return nil, fmt.Errorf("swd: info 0x%02x: %w", id, ErrProtocol)
	}
	return resp[2 : 2+int(resp[1])], nil
}

// InfoString reads a string item without its terminating NUL.
func (d *DAP) InfoString(ctx context.Context, id byte) (string, error) {
	b, err := d.Info(ctx, id)
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return string(b), err
}

// init reads the packet size and selects SWD at the given clock, as OpenOCD
// does: TransferConfigure(0 idle, 64 WAIT retries, 0 match retries) and one
// turnaround cycle.
func (d *DAP) init(ctx context.Context, clockHz uint32) error {
	d.packet = 64
	if b, err := d.Info(ctx, infoPacketSize); err != nil {
		return err
	} else if len(b) == 2 {
		if n := int(binary.LittleEndian.Uint16(b)); n >= 16 {
			d.packet = n
		}
	}
	resp, err := d.call(ctx, []byte{cmdConnect, 1})
	if err != nil {
		return err
	}
	if len(resp) < 2 || resp[1] != 1 {
		return fmt.Errorf("swd: the probe cannot connect in SWD mode: %w", ErrProtocol)
	}
	clk := make([]byte, 5)
	clk[0] = cmdSWJClock
	binary.LittleEndian.PutUint32(clk[1:], clockHz)
	if err := d.status(ctx, clk...); err != nil {
		return err
	}
	if err := d.status(ctx, cmdTransferConfigure, 0, 64, 0, 0, 0); err != nil {
		return err
	}
	return d.status(ctx, cmdSWDConfigure, 0)
}

// lineReset switches a SWJ-DP to SWD and resets the line: 51 ones, the
// JTAG-to-SWD select sequence 0xE79E, 51 ones and two idle cycles (OpenOCD's
// swd_seq_jtag_to_swd). The DP must be read (DPIDR) next.
func (d *DAP) lineReset(ctx context.Context) error {
	seq := []byte{cmdSWJSequence, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x9e, 0xe7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}
	seq[1] = byte((len(seq) - 2) * 8)
	return d.status(ctx, seq...)
}

// transfer runs ops in one DAP_Transfer and returns the values read, in order.
// An error says how many ops completed.
func (d *DAP) transfer(ctx context.Context, ops []op) ([]uint32, error) {
	cmd := []byte{cmdTransfer, 0, byte(len(ops))}
	nread := 0
	for _, o := range ops {
		cmd = append(cmd, o.request())
		if !o.read {
			cmd = binary.LittleEndian.AppendUint32(cmd, o.value)
		} else {
			nread++
		}
	}
	if len(cmd) > d.packet || len(ops) > 255 {
		return nil, fmt.Errorf("swd: transfer of %d ops does not fit a %d-byte packet", len(ops), d.packet)
	}
	resp, err := d.call(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if len(resp) < 3 {
		return nil, fmt.Errorf("swd: transfer: short answer: %w", ErrProtocol)
	}
	done, ack := int(resp[1]), resp[2]
	vals := make([]uint32, 0, nread)
	for i := 3; i+4 <= len(resp) && len(vals) < nread; i += 4 {
		vals = append(vals, binary.LittleEndian.Uint32(resp[i:]))
	}
	if err := ackErr(ack); err != nil || done != len(ops) {
		if err == nil {
			err = ErrProtocol
		}
		return vals, &TransferError{Done: done, Total: len(ops), Err: err}
	}
	if len(vals) != nread {
		return vals, fmt.Errorf("swd: transfer: %d values for %d reads: %w", len(vals), nread, ErrProtocol)
	}
	return vals, nil
}

// block reads (data == nil, n values) or writes data through one register
// with DAP_TransferBlock.
func (d *DAP) block(ctx context.Context, o op, n int, data []uint32) ([]uint32, error) {
	cmd := []byte{cmdTransferBlock, 0, 0, 0, o.request()}
	if o.read {
		data = nil
	} else {
		n = len(data)
		for _, v := range data {
			cmd = binary.LittleEndian.AppendUint32(cmd, v)
		}
	}
	binary.LittleEndian.PutUint16(cmd[2:], uint16(n))
	if n == 0 || n > 0xffff || len(cmd) > d.packet || (o.read && 4+4*n > d.packet) {
		return nil, fmt.Errorf("swd: block of %d words does not fit a %d-byte packet", n, d.packet)
	}
	resp, err := d.call(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if len(resp) < 4 {
		return nil, fmt.Errorf("swd: transfer block: short answer: %w", ErrProtocol)
	}
	done, ack := int(binary.LittleEndian.Uint16(resp[1:])), resp[3]
	var vals []uint32
	if o.read {
		for i := 4; i+4 <= len(resp) && len(vals) < done; i += 4 {
			vals = append(vals, binary.LittleEndian.Uint32(resp[i:]))
		}
	}
	if err := ackErr(ack); err != nil || done != n {
		if err == nil {
			err = ErrProtocol
		}
		return vals, &TransferError{Done: done, Total: n, Err: err}
	}
	if o.read && len(vals) != n {
		return vals, fmt.Errorf("swd: transfer block: %d of %d words: %w", len(vals), n, ErrProtocol)
	}
	return vals, nil
}

// maxBlockWords is how many words one TransferBlock carries each way.
func (d *DAP) maxBlockWords() int { return (d.packet - 5) / 4 }

// TransferError is a DAP transfer that stopped early.
type TransferError struct {
	Done, Total int
	Err         error
}

func (e *TransferError) Error() string {
	return fmt.Sprintf("swd: transfer stopped after %d of %d: %v", e.Done, e.Total, e.Err)
}

func (e *TransferError) Unwrap() error { return e.Err }

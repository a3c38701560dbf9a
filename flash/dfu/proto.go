package dfu

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Controller performs one USB control transfer on the device's DFU
// interface. rType is bmRequestType; for an IN request data receives the
// answer and the count says how much came. A stalled request returns an
// error wrapping ErrStall.
type Controller interface {
	Control(ctx context.Context, rType, request uint8, val, idx uint16, data []byte) (int, error)
}

// AltSetter is implemented by controllers that can select an alternate
// setting of the DFU interface (SET_INTERFACE). A DfuSe device exposes
// each memory as one alternate setting.
type AltSetter interface {
	SetAlt(ctx context.Context, alt int) error
}

// ErrStall is a request the device answered with a STALL handshake: it was
// not valid in the device's state. The device is then in dfuERROR.
var ErrStall = errors.New("request stalled")

// DFU class requests (DFU 1.1, section 3).
const (
	ReqDetach    = 0
	ReqDnload    = 1
	ReqUpload    = 2
	ReqGetStatus = 3
	ReqClrStatus = 4
	ReqGetState  = 5
	ReqAbort     = 6
)

// bmRequestType values for class requests to an interface.
const (
	TypeOut = 0x21
	TypeIn  = 0xa1
)

// State is a DFU device state (bState).
type State uint8

// DFU 1.1 states.
const (
	AppIdle              State = 0
	AppDetach            State = 1
	DfuIdle              State = 2
	DfuDnloadSync        State = 3
	DfuDnBusy            State = 4
	DfuDnloadIdle        State = 5
	DfuManifestSync      State = 6
	DfuManifest          State = 7
	DfuManifestWaitReset State = 8
	DfuUploadIdle        State = 9
	DfuError             State = 10
)

var stateNames = [...]string{"appIDLE", "appDETACH", "dfuIDLE", "dfuDNLOAD-SYNC", "dfuDNBUSY", "dfuDNLOAD-IDLE",
	"dfuMANIFEST-SYNC", "dfuMANIFEST", "dfuMANIFEST-WAIT-RESET", "dfuUPLOAD-IDLE", "dfuERROR"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Status is a DFU status code (bStatus).
type Status uint8

// DFU 1.1 status codes.
const (
	StatusOK          Status = 0x00
	StatusTarget      Status = 0x01
	StatusFile        Status = 0x02
	StatusWrite       Status = 0x03
	StatusErase       Status = 0x04
	StatusCheckErased Status = 0x05
	StatusProg        Status = 0x06
	StatusVerify      Status = 0x07
	StatusAddress     Status = 0x08
	StatusNotDone     Status = 0x09
	StatusFirmware    Status = 0x0a
	StatusVendor      Status = 0x0b
	StatusUSBR        Status = 0x0c
	StatusPOR         Status = 0x0d
	StatusUnknown     Status = 0x0e
	StatusStalledPkt  Status = 0x0f
)

var statusNames = [...]string{"OK", "errTARGET", "errFILE", "errWRITE", "errERASE", "errCHECK_ERASED", "errPROG",
	"errVERIFY", "errADDRESS", "errNOTDONE", "errFIRMWARE", "errVENDOR", "errUSBR", "errPOR", "errUNKNOWN",
	"errSTALLEDPKT"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(0x%02x)", uint8(s))
}

// DfuSe commands, sent as DNLOAD block 0.
const (
	CmdGetCommands = 0x00
	CmdSetAddress  = 0x21
	CmdErase       = 0x41
	CmdUnprotect   = 0x92
)

// StatusReport is the answer to GETSTATUS.
type StatusReport struct {
	Status      Status
	PollTimeout time.Duration
	State       State
	IString     uint8
}

// DeviceError is an error the device reported in GETSTATUS.
type DeviceError struct {
	Status Status
	State  State
}

func (e *DeviceError) Error() string {
	return fmt.Sprintf("device reports %v in %v", e.Status, e.State)
}

// StateError is a device found in a state the protocol did not expect.
type StateError struct {
	Got  State
	Want []State
}

func (e *StateError) Error() string {
	return fmt.Sprintf("device in %v, want %v", e.Got, e.Want)
}

// Clock is what the protocol waits on between GETSTATUS polls. The wall
// clock is the default; a device model may share a virtual clock with the
// host so that timing runs are exact and fast (see dfutest.VirtualClock).
type Clock interface {
	Now() time.Time
	Sleep(ctx context.Context, d time.Duration) error
}

// WallClock is the real clock.
type WallClock struct{}

// Now returns time.Now().
func (WallClock) Now() time.Time { return time.Now() }

// Sleep waits d or until ctx ends.
func (WallClock) Sleep(ctx context.Context, d time.Duration) error { return sleep(ctx, d) }

// proto is the DFU request layer over a Controller.
type proto struct {
	c     Controller
	iface uint16
	clock Clock
}

func (p *proto) getStatus(ctx context.Context) (StatusReport, error) {
	var b [6]byte
	n, err := p.c.Control(ctx, TypeIn, ReqGetStatus, 0, p.iface, b[:])
	if err != nil {
		return StatusReport{}, fmt.Errorf("getstatus: %w", err)
	}
	if n != 6 {
		return StatusReport{}, fmt.Errorf("getstatus: %d bytes, want 6", n)
	}
	ms := uint32(b[1]) | uint32(b[2])<<8 | uint32(b[3])<<16
	return StatusReport{Status: Status(b[0]), PollTimeout: time.Duration(ms) * time.Millisecond, State: State(b[4]), IString: b[5]}, nil
}

func (p *proto) getState(ctx context.Context) (State, error) {
	var b [1]byte
	n, err := p.c.Control(ctx, TypeIn, ReqGetState, 0, p.iface, b[:])
	if err != nil {
		return 0, fmt.Errorf("getstate: %w", err)
	}
	if n != 1 {
		return 0, fmt.Errorf("getstate: %d bytes, want 1", n)
	}
	return State(b[0]), nil
}

func (p *proto) clrStatus(ctx context.Context) error {
	if _, err := p.c.Control(ctx, TypeOut, ReqClrStatus, 0, p.iface, nil); err != nil {
		return fmt.Errorf("clrstatus: %w", err)
	}
	return nil
}

func (p *proto) abort(ctx context.Context) error {
	if _, err := p.c.Control(ctx, TypeOut, ReqAbort, 0, p.iface, nil); err != nil {
		return fmt.Errorf("abort: %w", err)
	}
	return nil
}

func (p *proto) dnload(ctx context.Context, block uint16, data []byte) error {
	n, err := p.c.Control(ctx, TypeOut, ReqDnload, block, p.iface, data)
	if err != nil {
		return fmt.Errorf("dnload block %d: %w", block, err)
	}
	if n != len(data) {
		return fmt.Errorf("dnload block %d: sent %d of %d bytes", block, n, len(data))
	}
	return nil
}

func (p *proto) upload(ctx context.Context, block uint16, buf []byte) (int, error) {
	n, err := p.c.Control(ctx, TypeIn, ReqUpload, block, p.iface, buf)
	if err != nil {
		return n, fmt.Errorf("upload block %d: %w", block, err)
	}
	return n, nil
}

// settle polls GETSTATUS after a DNLOAD until the device has finished the
// block (dfuDNLOAD-IDLE), waiting bwPollTimeout between polls as DFU 1.1
// requires. A device error comes back as *DeviceError; any other state as
// *StateError.
func (p *proto) settle(ctx context.Context, done State) error {
	for i := 0; ; i++ {
		st, err := p.getStatus(ctx)
		if err != nil {
			return err
		}
		if st.Status != StatusOK || st.State == DfuError {
			return &DeviceError{Status: st.Status, State: st.State}
		}
		switch st.State {
		case done:
			return nil
		case DfuDnBusy, DfuDnloadSync, DfuManifestSync:
			if i > 1000 {
				return fmt.Errorf("device stays in %v: %w", st.State, &StateError{Got: st.State, Want: []State{done}})
			}
			if err := p.clock.Sleep(ctx, st.PollTimeout); err != nil {
				return err
			}
		default:
			return &StateError{Got: st.State, Want: []State{done}}
		}
	}
}

// idle brings the device to dfuIDLE from wherever it is: CLRSTATUS out of
// dfuERROR, ABORT out of the download and upload states.
func (p *proto) idle(ctx context.Context) error {
	var last error
	for i := 0; i < 4; i++ {
		st, err := p.getStatus(ctx)
		if err != nil {
			last = err
			// A stalled GETSTATUS leaves the device in dfuERROR; clear it.
			if errors.Is(err, ErrStall) {
				_ = p.clrStatus(ctx)
				continue
			}
			return err
		}
		switch st.State {
		case DfuIdle:
			if st.Status == StatusOK {
				return nil
			}
			last = &DeviceError{Status: st.Status, State: st.State}
			_ = p.clrStatus(ctx)
		case DfuError:
			last = &DeviceError{Status: st.Status, State: st.State}
			if err := p.clrStatus(ctx); err != nil {
				last = err
			}
		case DfuDnBusy, DfuDnloadSync:
			last = &StateError{Got: st.State, Want: []State{DfuIdle}}
			if err := p.clock.Sleep(ctx, st.PollTimeout); err != nil {
				return err
			}
		case DfuDnloadIdle, DfuUploadIdle, DfuManifestSync:
			last = &StateError{Got: st.State, Want: []State{DfuIdle}}
			if err := p.abort(ctx); err != nil {
				last = err
			}
		default:
			return fmt.Errorf("cannot reach dfuIDLE: %w", &StateError{Got: st.State, Want: []State{DfuIdle}})
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("cannot reach dfuIDLE: %w", last)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

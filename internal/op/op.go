package op

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/trust"
)

// Request is one device operation as a caller asks for it.
type Request struct {
	// Artifact is the file or build directory to write (or to verify).
	Artifact string
	Load     LoadOptions
	// Board defaults to the artifact's own (its manifest or kiln.json).
	Board string
	// Port is a device path, auto, usb:SERIAL, emu:BOARD, dfu:..., or
	// ssh://user@host/dev/... (a whole-disk write).
	Port string
	// Protocol overrides the back end Resolve would pick.
	Protocol string
	// Group is the device group the trust policy may select on.
	Group string
	// Policy is the trust policy; nil requires no signature.
	Policy *trust.Policy
	// Device tunes how the port is opened (baud, notes, emulator).
	Device device.Options
	// Disk tunes ssh:// writes and updates.
	Disk DiskOptions
	// Progress is told how far long work has come; Note gets remarks for
	// the user. Both may be nil.
	Progress flash.Progress
	Note     Note
	// Record appends the operation's audit record; nil writes none.
	Record func(auditlog.Entry) error
	// Open opens the device (default device.Open); tests count opens.
	Open func(ctx context.Context, spec string, b *boards.Board, protocol string, opts device.Options) (device.Session, error)
}

// Note is flash.Note: the one printf-style note signature.
type Note = flash.Note

// Report is what every device operation returns, whatever the back end:
// the CLI prints it (and --json is this object).
type Report struct {
	Op       string `json:"op"` // flash, verify, update
	Board    string `json:"board"`
	Port     string `json:"port"`
	Protocol string `json:"protocol"`
	Device   string `json:"device,omitempty"`
	// Image is the artifact as named.
	Image string `json:"image"`
	// ArtifactSHA256 is the hash of the artifact file as read (once).
	ArtifactSHA256 string `json:"artifact_sha256,omitempty"`
	// ImageSHA256 is the hash of what is written (firmware: its segments
	// in address order; a disk: the whole plain image); DeviceSHA256 the
	// device's hash of the same, read back or computed on the device.
	ImageSHA256  string          `json:"image_sha256"`
	DeviceSHA256 string          `json:"device_sha256,omitempty"`
	Bytes        int64           `json:"bytes"`
	Verified     bool            `json:"verified"`
	Derivation   string          `json:"derivation,omitempty"`
	Trust        *trust.Decision `json:"trust,omitempty"`
	WriteSec     float64         `json:"write_seconds,omitempty"`
	VerifySec    float64         `json:"verify_seconds"`
	TotalSec     float64         `json:"total_seconds"`
	Error        string          `json:"error,omitempty"`
	// Disk and Update hold the details of a whole-disk write (ranges,
	// bytes written; the same for every disk back end) and of an A/B
	// update (slots, bytes sent).
	Disk   *flash.DiskResult    `json:"disk,omitempty"`
	Update *sshdev.UpdateResult `json:"update,omitempty"`
}

// Flash writes the artifact to the device and proves it: load, board
// check, trust gate, open, write, verify, audit record. Every outcome
// after the load is recorded. A mismatch wraps flash.ErrVerify, a
// refusal by the policy ErrUntrusted, an artifact for another board
// ErrWrongBoard.
func Flash(ctx context.Context, req Request) (*Report, error) {
	if be, err := device.DiskBackend(req.Port); be != nil || err != nil {
		return FlashDisk(ctx, req)
	}
	return firmware(ctx, req, true)
}

// Verify reads the artifact's extent back from the device and compares,
// without writing.
func Verify(ctx context.Context, req Request) (*Report, error) {
	if be, _ := device.DiskBackend(req.Port); be != nil {
		return nil, fmt.Errorf("verify of a whole disk: %w: use kiln update (A/B) or kiln flash, which both prove the write on the device", ErrUsage)
	}
	return firmware(ctx, req, false)
}

// ErrUsage marks a request that cannot be carried out as asked.
var ErrUsage = errors.New("usage")

func firmware(ctx context.Context, req Request, write bool) (rep *Report, err error) {
	start := time.Now()
	rep = &Report{Op: "verify", Port: req.Port, Image: req.Artifact}
	if write {
		rep.Op = "flash"
	}
	a, err := LoadFirmware(req.Artifact, req.Load)
	if err != nil {
		return rep, err
	}
	rep.Image, rep.ArtifactSHA256, rep.ImageSHA256, rep.Bytes, rep.Derivation = a.Path, a.SHA256, a.Image.SHA256(), int64(a.Image.Size()), a.Derivation
	b, err := Board(req.Board, a)
	if err != nil {
		return rep, err
	}
	rep.Board = b.Name
	if err := CheckBoard(a, b); err != nil {
		return rep, err
	}
	defer func() { err = record(req, rep, err) }()
	if write {
		if rep.Trust, err = Trust(req.Policy, a, trust.Target{Board: b.Name, Group: req.Group, Port: req.Port}); err != nil {
			return rep, err
		}
	}
	be, err := device.Resolve(req.Port, b, req.Protocol)
	if err != nil {
		return rep, err
	}
	rep.Protocol = be.Protocol
	open := req.Open
	if open == nil {
		open = device.Open
	}
	opts := req.Device
	if opts.Note == nil {
		opts.Note = req.Note
	}
	sess, err := open(ctx, req.Port, b, be.Protocol, opts)
	if err != nil {
		return rep, err
	}
	var res flash.Result
	if write {
		res, err = flash.Program(ctx, sess, a.Image, req.Progress)
	} else {
		res, err = flash.Verify(ctx, sess, a.Image, req.Progress)
	}
	if cerr := sess.Close(); cerr != nil && err == nil && !errors.Is(cerr, context.Canceled) {
		// The image is on the device and proven; a failed goodbye is a note.
		req.Note.Printf("closing %s: %v", req.Port, cerr)
	}
	rep.Device, rep.DeviceSHA256, rep.Verified = res.Device, res.DeviceSHA256, res.Verified && err == nil
	rep.WriteSec, rep.VerifySec, rep.TotalSec = res.WriteTime.Seconds(), res.VerifyTime.Seconds(), time.Since(start).Seconds()
	return rep, err
}

// record appends the operation's audit record (whatever its outcome) and
// returns err, or the log's error when the operation succeeded.
func record(req Request, rep *Report, err error) error {
	if err != nil {
		rep.Error = oneLine(err.Error())
	}
	if req.Record == nil {
		return err
	}
	kind := map[string]string{"flash": auditlog.KindFlash, "verify": auditlog.KindVerify, "update": auditlog.KindUpdate}[rep.Op]
	e := auditlog.Entry{
		Kind: kind, Board: rep.Board, Port: rep.Port, Device: rep.Device, Artifact: rep.Image,
		ArtifactSHA256: rep.ImageSHA256, ReadbackSHA256: rep.DeviceSHA256, Derivation: rep.Derivation,
		Result: Result(err), Detail: rep.Error,
	}
	if lerr := req.Record(e); lerr != nil && err == nil {
		return fmt.Errorf("audit log: %w", lerr)
	}
	return err
}

// Result names an operation's outcome for the audit log.
func Result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, trust.ErrUntrusted):
		return "untrusted"
	case errors.Is(err, flash.ErrVerify):
		return "mismatch"
	}
	return "error"
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Read opens the device at req.Port as board b and reads the regions back
// (kiln audit --port): the device's bytes and its identity.
func Read(ctx context.Context, req Request, b *boards.Board, rs []flash.Region) (*flash.Image, string, error) {
	be, err := device.Resolve(req.Port, b, req.Protocol)
	if err != nil {
		return nil, "", err
	}
	open := req.Open
	if open == nil {
		open = device.Open
	}
	sess, err := open(ctx, req.Port, b, be.Protocol, req.Device)
	if err != nil {
		return nil, "", err
	}
	dev, err := flash.ReadImage(ctx, sess, rs, req.Progress)
	id := sess.Identity()
	if cerr := sess.Close(); err == nil && cerr != nil && !errors.Is(cerr, context.Canceled) {
		req.Note.Printf("closing %s: %v", req.Port, cerr)
	}
	if err != nil {
		return nil, id, err
	}
	return dev, id, nil
}

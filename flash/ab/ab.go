package ab

import (
	"context"
	"errors"
	"io"
	"time"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/image/disk"
)

var (
	// ErrRolledBack means the new slot failed its trial boot or health check
	// and the device is back on its committed slot.
	ErrRolledBack = errors.New("update rolled back")
	// ErrBusy means another update holds the device's update lock.
	ErrBusy = errors.New("another update is in progress")
	// ErrCommitUnknown means the commit was sent but the device could not be
	// reached to see whether it landed.
	ErrCommitUnknown = errors.New("commit not confirmed")
	// ErrConnLost means the connection to the device dropped during a step:
	// the step may or may not have happened.
	ErrConnLost = errors.New("connection lost")
	// ErrLayout means the device or the image has no usable A/B layout.
	ErrLayout = disk.ErrLayout
)

// State is what the device says about itself.
type State struct {
	Table     *disk.Table
	Layout    *disk.Metadata // kiln.json of the device's first partition
	Committed disk.Slot      // the slot the device boots by default
	Running   disk.Slot      // the slot it runs now
	BootID    string         // changes with every boot
	Uptime    float64        // seconds since boot; -1 if unknown
}

// Trial reports whether the device runs a slot it has not committed.
func (s *State) Trial() bool { return s.Running != s.Committed }

// Device is one connection to a device under update. Each method is one
// step; an error wrapping ErrConnLost means the answer was lost and the
// step may have happened.
type Device interface {
	// Inspect reads the device's table, slots and boot state. ArmTrial and
	// Commit act on what the last Inspect found.
	Inspect(ctx context.Context) (*State, error)
	// Lock takes the device's update lock for owner (ErrBusy if another
	// holds it); it lasts until Unlock or the next boot.
	Lock(ctx context.Context, owner string) error
	Unlock(ctx context.Context, owner string)
	// WriteVerified writes n bytes of src to partition part and returns the
	// device's own SHA-256 of the partition's first n bytes, read back from
	// the medium. It may write only the blocks that differ.
	WriteVerified(ctx context.Context, part disk.Partition, src io.ReaderAt, n int64, phase string) (string, error)
	// ArmTrial makes the next boot start slot trial; unless the trial is
	// committed, later boots start committed (with tryboot the very next
	// one; U-Boot's boot counter allows bootlimit trial boots).
	ArmTrial(ctx context.Context, committed, trial disk.Slot) error
	// Reboot restarts the device: into the armed trial if trial is set,
	// else into the committed slot (a boot loader that would boot a pending
	// trial again, U-Boot with a boot counter, has it cancelled first). It
	// returns once the request is sent; the connection then ends.
	Reboot(ctx context.Context, trial bool) error
	// Commit makes slot the default; previous becomes the fallback.
	Commit(ctx context.Context, slot, previous disk.Slot) error
	// Health runs the health check on the device.
	Health(ctx context.Context, cmd string) error
	Close() error
}

// Dialer opens a new connection to the device (updates reconnect after
// reboots).
type Dialer func(ctx context.Context) (Device, error)

// Options tune Update.
type Options struct {
	Health        string        // health check run on the new slot; default "true"
	HealthTimeout time.Duration // default 60s
	BootTimeout   time.Duration // how long a reboot may take; default 120s
	TrialGrace    time.Duration // an unlocked trial boot younger than this is left alone (ErrBusy); default 2 min
	Poll          time.Duration // between reconnection attempts; default 200ms
	Owner         string        // names this update in the device's lock
	Log           flash.Note
}

func (o *Options) defaults() {
	if o.Health == "" {
		o.Health = "true"
	}
	if o.HealthTimeout == 0 {
		o.HealthTimeout = 60 * time.Second
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 120 * time.Second
	}
	if o.TrialGrace == 0 {
		o.TrialGrace = 2 * time.Minute
	}
	if o.Poll == 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.Owner == "" {
		o.Owner = "kiln"
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
}

// Result is what an update did.
type Result struct {
	Device      string  `json:"device"`
	From        string  `json:"from_slot"`
	To          string  `json:"to_slot"`
	Derivation  string  `json:"derivation"`
	RootSHA256  string  `json:"root_sha256"`
	BootSHA256  string  `json:"boot_sha256"`
	BytesSent   int64   `json:"bytes_sent"`
	BytesImage  int64   `json:"bytes_image"`
	Committed   bool    `json:"committed"`
	RolledBack  bool    `json:"rolled_back"`
	Reason      string  `json:"reason,omitempty"`
	UsedHelper  bool    `json:"used_helper"`
	WriteSec    float64 `json:"write_verify_s"` // writing and proving both partitions
	DurationSec float64 `json:"duration_s"`
}

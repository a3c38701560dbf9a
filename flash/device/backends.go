package device

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/flash/avr109"
	"kiln.dev/kiln/flash/avr109/avr109test"
	"kiln.dev/kiln/flash/blockdev"
	"kiln.dev/kiln/flash/dfu"
	"kiln.dev/kiln/flash/dfu/dfutest"
	"kiln.dev/kiln/flash/ssh"
	"kiln.dev/kiln/flash/stk500"
	"kiln.dev/kiln/flash/stk500/stk500test"
	"kiln.dev/kiln/flash/stk500v2"
	"kiln.dev/kiln/flash/stk500v2/stk500v2test"
	"kiln.dev/kiln/flash/stm32"
	"kiln.dev/kiln/flash/stm32/stm32test"
	"kiln.dev/kiln/flash/swd"
	"kiln.dev/kiln/flash/swd/swdtest"
	"kiln.dev/kiln/image/disk"
)

// Backend is one flashing protocol as kiln drives it: everything the rest
// of kiln needs to know about a back end is in its entry of the table.
// A protocol either speaks over a byte stream (Connect: serial ports,
// pseudo-terminals, emu: pipes) or owns its own port specs (Open).
type Backend struct {
	// Protocol is the name board files use.
	Protocol string
	// Ports are the port-spec prefixes only this back end opens ("dfu:",
	// "ssh://"); a port with one of them selects the back end.
	Ports []string
	// PortKind says what such a port is, for messages ("USB DFU device").
	PortKind string
	// Resets are the reset kinds a board file may name with this protocol.
	Resets []string
	// Connect starts the protocol on an open line (byte-stream back ends).
	Connect func(ctx context.Context, line *Line, b *boards.Board, opts Options) (Session, error)
	// Open opens port spec for board b (back ends that are not a byte
	// stream). emu: specs go to OpenEmulator instead.
	Open func(ctx context.Context, spec string, b *boards.Board, opts Options) (Session, error)
	// Emulate returns the device model of board b serving the protocol on
	// a byte stream (emu:BOARD and kiln emulate).
	Emulate func(b *boards.Board, opts EmulatorOptions) (Emulator, error)
	// OpenEmulator opens an in-process model of board model checked
	// against board b, for back ends that are not a byte stream.
	OpenEmulator func(model, b *boards.Board, opts Options) (Session, error)
	// OpenDisk opens the disk a port names, for back ends that write whole
	// disk images (ssh whole-disk, a local block device): the target and
	// the device's name for reports. internal/op drives it through
	// flash.WriteDisk.
	OpenDisk func(ctx context.Context, port string, opts DiskOptions) (flash.DiskTarget, string, error)
	// CheckPort refuses a malformed port of a disk back end before any
	// work (ErrBadPort).
	CheckPort func(port string) error
	// Hints are lines a user can act on for an error of this back end.
	Hints func(err error, port string) []string
}

// serialResets are the reset kinds a serial line can pulse
// (flash/serialport).
var serialResets = []string{"dtr", "rts", "1200bps", "gpio:", "none"}

// table is every back end kiln has. A new back end adds its entry here
// (and its package and board files): nothing else in kiln branches on
// protocol names.
var table = map[string]*Backend{
	"stk500v1": {
		Protocol: "stk500v1", Resets: serialResets,
		Connect: func(ctx context.Context, line *Line, b *boards.Board, opts Options) (Session, error) {
			sig, err := b.AVRSignature()
			if err != nil {
				return nil, err
			}
			c := stk500.New(line, stk500.Config{
				Signature: sig, PageSize: int(b.Flash.Page), Baud: baudOf(b, opts),
				Reset: line.Reset, BootTime: line.BootTime, Tries: opts.Tries, Timeout: opts.Timeout,
			})
			if err := c.Connect(ctx); err != nil {
				return nil, err
			}
			return NewSession(c, c, line), nil
		},
		Emulate: func(b *boards.Board, opts EmulatorOptions) (Emulator, error) {
			cfg, err := stk500test.ForBoard(b)
			if err != nil {
				return nil, err
			}
			cfg.Pace = opts.Pace
			return stk500test.New(cfg), nil
		},
		Hints: func(err error, port string) []string {
			if errors.Is(err, stk500.ErrNoSync) {
				return noAnswerHints(port)
			}
			return nil
		},
	},
	"avr109": {
		// Caterina (ATmega32u4: Leonardo, Micro): the board's USB serial
		// port restarts into the bootloader on a 1200 bps touch and comes
		// back as a new port (flash/serialport finds it).
		Protocol: "avr109", Resets: serialResets,
		Connect: func(ctx context.Context, line *Line, b *boards.Board, opts Options) (Session, error) {
			sig, err := b.AVRSignature()
			if err != nil {
				return nil, err
			}
			c := avr109.New(line, avr109.Config{Signature: sig, PageSize: int(b.Flash.Page), Timeout: opts.Timeout, Tries: opts.Tries})
			if err := c.Connect(ctx); err != nil {
				return nil, err
			}
			return NewSession(c, c, c, line), nil
		},
		Emulate: func(b *boards.Board, opts EmulatorOptions) (Emulator, error) {
			cfg, err := avr109test.ForBoard(b)
			if err != nil {
				return nil, err
			}
			cfg.Pace = opts.Pace
			return avr109test.New(cfg), nil
		},
		Hints: func(err error, port string) []string {
			if errors.Is(err, avr109.ErrNoSync) {
				return []string{"is the board in its bootloader? a Leonardo or Micro enters it on a 1200 bps touch (its reset = \"1200bps\") or a double press of reset, for 8 s"}
			}
			return nil
		},
	},
	"stk500v2": {
		Protocol: "stk500v2", Resets: serialResets,
		Connect: func(ctx context.Context, line *Line, b *boards.Board, opts Options) (Session, error) {
			sig, err := b.AVRSignature()
			if err != nil {
				return nil, err
			}
			c := stk500v2.New(line, stk500v2.Config{
				Signature: sig, PageSize: int(b.Flash.Page), FlashSize: flashSize(b), Baud: baudOf(b, opts),
				Reset: line.Reset, BootTime: line.BootTime, Tries: opts.Tries, Timeout: opts.Timeout,
			})
			if err := c.Connect(ctx); err != nil {
				return nil, err
			}
			return NewSession(c, c, line), nil
		},
		Emulate: func(b *boards.Board, opts EmulatorOptions) (Emulator, error) {
			cfg, err := stk500v2test.ForBoard(b)
			if err != nil {
				return nil, err
			}
			cfg.Pace = opts.Pace
			return stk500v2test.New(cfg), nil
		},
		Hints: func(err error, port string) []string {
			if errors.Is(err, stk500v2.ErrChecksum) || errors.Is(err, stk500v2.ErrShort) {
				return []string{"is the baud rate right (--baud)? a Mega's bootloader runs at 115200"}
			}
			return nil
		},
	},
	"stm32-uart": {
		Protocol: "stm32-uart", Resets: serialResets,
		Connect: func(ctx context.Context, line *Line, b *boards.Board, opts Options) (Session, error) {
			t, err := stm32.Open(ctx, line, b, stm32.Options{
				Baud: baudOf(b, opts), Timeout: opts.Timeout, SyncTries: opts.Tries, Reset: line.Reset,
				Note: opts.Note,
			})
			if err != nil {
				return nil, err
			}
			return NewSession(t, t, line), nil
		},
		Emulate: func(b *boards.Board, opts EmulatorOptions) (Emulator, error) {
			d, err := stm32test.New(b)
			if err != nil {
				return nil, err
			}
			if opts.Pace {
				d.Timing = stm32test.Paced(b.Baud)
			}
			return d, nil
		},
		Hints: func(err error, port string) []string {
			switch {
			case errors.Is(err, stm32.ErrUnknownChip):
				return []string{"kiln knows the STM32 lines in flash/stm32's Families table; add the product ID there"}
			case errors.Is(err, stm32.ErrNACK):
				return []string{"is the chip read-protected? (stm32flash -k unprotects it, erasing the flash)"}
			}
			return nil
		},
	},
	"dfuse": {
		// USB DFU (DfuSe): dfu:[VID:PID][,serial=S] and auto open a USB
		// device through libusb; emu:BOARD opens the DfuSe device model.
		// Both are the same dfu.Target.
		Protocol: "dfuse", Ports: []string{"dfu:"}, PortKind: "USB DFU device", Resets: []string{"none"},
		Open: func(ctx context.Context, spec string, b *boards.Board, opts Options) (Session, error) {
			return dfu.OpenBoard(ctx, spec, b)
		},
		OpenEmulator: func(model, b *boards.Board, opts Options) (Session, error) {
			t, dev, err := dfutest.Open(model)
			if err != nil {
				return nil, err
			}
			if opts.Emulator.Pace {
				dev.SetTiming(dfutest.Paced(model))
			}
			if err := t.CheckBoard(b); err != nil {
				return nil, err
			}
			return t, nil
		},
		Hints: func(err error, port string) []string {
			if errors.Is(err, flash.ErrNoDevice) {
				return []string{"is the board in DFU mode (BOOT0 high, then reset)? lsusb shows 0483:df11 when it is"}
			}
			return nil
		},
	},
	"swd": {
		// Serial Wire Debug through a CMSIS-DAP v2 probe:
		// swd:[VID:PID][,serial=S] opens a probe through libusb; emu:BOARD
		// puts the probe and chip models of flash/swd/swdtest in process.
		// Both are the same swd.Target.
		Protocol: "swd", Ports: []string{"swd:"}, PortKind: "SWD debug probe", Resets: []string{"none"},
		Open: func(ctx context.Context, spec string, b *boards.Board, opts Options) (Session, error) {
			return swd.OpenUSB(ctx, spec, b, swd.Options{Unprotect: opts.Unprotect, Note: opts.Note})
		},
		OpenEmulator: func(model, b *boards.Board, opts Options) (Session, error) {
			chip, err := swdtest.NewChip(model)
			if err != nil {
				return nil, err
			}
			if opts.Emulator.Pace {
				chip.TimeScale = 1
			}
			return swd.Open(context.Background(), swdtest.NewProbe(chip, "EMU-"+model.Name), b, swd.Options{Unprotect: opts.Unprotect, Note: opts.Note})
		},
		Hints: func(err error, port string) []string {
			switch {
			case errors.Is(err, swd.ErrProtected):
				return []string{"--unprotect removes read-out protection; the chip erases its whole flash as it does"}
			case errors.Is(err, swd.ErrUnknownChip):
				return []string{"kiln knows the STM32 lines in flash/swd's Families table; add the DEV_ID there"}
			case errors.Is(err, swd.ErrNoAck):
				return []string{"is the target powered, and SWDIO, SWCLK and GND connected? a chip in a low-power mode may need reset held"}
			case errors.Is(err, flash.ErrNoDevice) && strings.HasPrefix(port, "swd:"):
				return []string{"is the probe plugged in? kiln speaks CMSIS-DAP v2 (DAPLink, Pico probes); several probes: pick one with --port swd:VID:PID,serial=S"}
			}
			return nil
		},
	},
	"blockdev": {
		// An SD card in a reader on this machine: a whole-disk write with
		// read-back proof (kiln flash --port /dev/sdX IMAGE, or
		// blockdev:/dev/disk/by-id/...). Driven by internal/op over
		// flash/blockdev; its tests run on loop devices.
		Protocol: "blockdev", Ports: []string{"blockdev:", "/dev/sd", "/dev/mmcblk", "/dev/disk/by-", "/dev/loop", "/dev/nvme", "/dev/vd"},
		PortKind: "local block device", Resets: []string{"none"}, OpenDisk: openBlockDisk,
		Hints: func(err error, port string) []string {
			switch {
			case errors.Is(err, blockdev.ErrNotRemovable):
				return []string{"the disk does not say it is removable (a USB SD reader does): check it is the card, then pass --force"}
			case errors.Is(err, blockdev.ErrMounted):
				return []string{"unmount every partition of the card first (umount, or eject it in the desktop)"}
			case errors.Is(err, blockdev.ErrSystemDisk):
				return []string{"this is the disk the running system is on: name the card's device (lsblk lists disks)"}
			case errors.Is(err, blockdev.ErrTooSmall):
				return []string{"use a larger card"}
			}
			return nil
		},
	},
	"ssh": {
		// A Raspberry Pi (or any Linux device) over SSH: a whole-disk write
		// (kiln flash --port ssh://host/dev/sdX) or an A/B update. Driven by
		// internal/op over flash/ssh (transport) and flash/sshdev (the device side); its device model is flash/ssh/sshtest.
		Protocol: "ssh", Ports: []string{"ssh://"}, PortKind: "device reached over SSH", Resets: []string{"none"},
		OpenDisk: openSSHDisk, CheckPort: checkSSHDisk,
		Hints: func(err error, port string) []string {
			switch {
			case errors.Is(err, ssh.ErrHostKey):
				return []string{"kiln never skips host key checks: add the device's key to known_hosts (ssh-keyscan, checked out of band) or pass --known-hosts"}
			case errors.Is(err, ab.ErrBusy):
				return []string{"wait for the other update to finish; if it is gone, remove the lock directory on the device or reboot it"}
			case errors.Is(err, ab.ErrCommitUnknown):
				return []string{"the device runs the new slot if the commit landed, else the old one after its next restart; see which with kiln fleet status, or run kiln update again"}
			case errors.Is(err, ssh.ErrNoKey):
				return []string{"kiln never asks for a password: give --ssh-key or start an ssh agent"}
			}
			return nil
		},
	},
}

// Backends returns the table's entries, sorted by protocol.
func Backends() []*Backend {
	var bs []*Backend
	for _, b := range table {
		bs = append(bs, b)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].Protocol < bs[j].Protocol })
	return bs
}

// Lookup returns the back end of protocol; ErrUnsupported if kiln has none.
func Lookup(protocol string) (*Backend, error) {
	be := table[protocol]
	if be == nil {
		return nil, fmt.Errorf("device: %s: %w", protocol, ErrUnsupported)
	}
	return be, nil
}

// Resolve picks the protocol for port on board b: the one asked for, else
// the one whose port prefix the spec carries, else the board's default.
// The board must speak it.
func Resolve(port string, b *boards.Board, protocol string) (*Backend, error) {
	if protocol == "" {
		protocol = b.Protocol
		if be := byPort(port); be != nil && b.Supports(be.Protocol) {
			protocol = be.Protocol
		}
	}
	if !b.Supports(protocol) {
		return nil, fmt.Errorf("device: %s does not speak %s (it speaks %s)", b.Name, protocol, strings.Join(b.Protocols, ", "))
	}
	be, err := Lookup(protocol)
	if err != nil {
		return nil, err
	}
	if owner := byPort(port); owner != nil && owner != be {
		return nil, fmt.Errorf("device: port %s is a %s, but %s speaks %s here (try --protocol %s)", port, owner.PortKind, b.Name, protocol, owner.Protocol)
	}
	return be, nil
}

// byPort returns the back end that owns port's prefix, or nil.
func byPort(port string) *Backend {
	for _, be := range table {
		for _, p := range be.Ports {
			if strings.HasPrefix(strings.ToLower(port), p) {
				return be
			}
		}
	}
	return nil
}

// Hints returns lines a user can act on for a device error at port: the
// back end's own, then those every back end shares.
func Hints(err error, port string) []string {
	var hs []string
	for _, be := range Backends() {
		if be.Hints != nil {
			hs = append(hs, be.Hints(err, port)...)
		}
	}
	switch {
	case errors.Is(err, flash.ErrVerify):
		hs = append(hs, "the device does not hold the image: flash it again; if it persists, the flash may be worn or protected")
	case errors.Is(err, flash.ErrWrongDevice):
		hs = append(hs, "is --board right, and is "+port+" the board you mean?")
	case errors.Is(err, flash.ErrNoAnswer) && len(hs) == 0:
		hs = append(hs, noAnswerHints(port)...)
	case errors.Is(err, flash.ErrNoDevice):
		hs = append(hs, "is the board plugged in? kiln boards shows its USB ids; give a path with --port if it uses another adapter")
	case errors.Is(err, ErrUnsupported):
		hs = append(hs, "kiln boards lists each board's protocols; pick another with --protocol")
	case errors.Is(err, disk.ErrNoBmap):
		hs = append(hs, "give the image's bmap with --bmap (kiln image build writes image.bmap beside image.img.xz), or write the uncompressed image.img")
	case errors.Is(err, disk.ErrBmap):
		hs = append(hs, "use the bmap built with this image (image.bmap in the same build output): a bmap of another build maps other blocks")
	}
	return hs
}

func noAnswerHints(port string) []string {
	return []string{"is the board in bootloader mode? (press reset just before flashing if the port cannot reset it)",
		"is the baud rate right (--baud)?", "is " + port + " the board's port, and is no other program using it?"}
}

func baudOf(b *boards.Board, opts Options) int {
	if opts.Baud > 0 {
		return opts.Baud
	}
	return b.Baud
}

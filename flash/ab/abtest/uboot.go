package abtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"kiln.dev/kiln/flash/ab"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/image/uboot"
)

// NewUBoot returns a device whose boot loader is U-Boot running kiln's
// boot.scr (image/recipebuild) over uboot.env: committed to and running
// the slot named committed, allowing bootlimit boots of a trial. Its
// ArmTrial, Commit and the disarm before a plain Reboot are kiln's own
// (ab.UBootArm, ab.UBootCommit, ab.UBootDisarm) over the device's env file,
// as the shell device runs them over SSH.
func NewUBoot(table *disk.Table, layout *disk.Metadata, committed string, bootlimit int) (*Device, error) {
	d, err := New(table, layout, committed)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{
		"bootcmd":          "load mmc 0:1 ${scriptaddr} boot.scr && source ${scriptaddr}",
		"bootdelay":        "0",
		uboot.VarSlot:      committed,
		uboot.VarFallback:  committed,
		uboot.VarTrial:     "0",
		uboot.VarBootCount: "0",
		uboot.VarBootLimit: strconv.Itoa(bootlimit),
	}
	env, err := uboot.EncodeEnv(vars, uboot.EnvSize)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.env = env
	d.boots = nil
	d.boot()
	return d, nil
}

// Env returns a copy of a U-Boot device's uboot.env.
func (d *Device) Env() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.env...)
}

// SetEnv replaces a U-Boot device's uboot.env.
func (d *Device) SetEnv(env []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.env = append([]byte(nil), env...)
}

func (d *Device) slotByName(name string) disk.Slot {
	for _, s := range d.layout.Slots {
		if s.Name == name {
			return s
		}
	}
	return disk.Slot{}
}

// ubootCommitted is the slot the device ends on when no trial is marked
// good: the fallback of a trial, the first slot when U-Boot ignores the
// env. Called with mu held.
func (d *Device) ubootCommitted() disk.Slot {
	vars, err := uboot.DecodeEnv(d.env)
	if err != nil {
		return d.layout.Slots[0]
	}
	name := vars[uboot.VarSlot]
	if vars[uboot.VarTrial] == "1" {
		name = vars[uboot.VarFallback]
	}
	if s := d.slotByName(name); s.Name != "" {
		return s
	}
	return d.layout.Slots[0]
}

// ubootBoot is one boot (UBootChoose), where a trial kernel that hangs
// (BadTrial) is reset by the watchdog and counted again, and a system that
// marks itself good (MarksGood) does so. Called with mu held.
func (d *Device) ubootBoot() disk.Slot {
	for {
		var names []string
		for _, s := range d.layout.Slots {
			names = append(names, s.Name)
		}
		name, trial, saved, note := UBootChoose(d.env, names)
		d.env = saved
		s := d.slotByName(name)
		d.boots = append(d.boots, "slot "+name+note)
		if trial && d.BadTrial {
			continue // the trial kernel hangs; the watchdog resets
		}
		if trial && d.MarksGood {
			vars, _ := uboot.DecodeEnv(d.env)
			vars[uboot.VarTrial], vars[uboot.VarBootCount] = "0", "0" // fw_setenv, from the system
			d.saveenv(vars)
			d.boots = append(d.boots, "slot "+name+" marked itself good")
		}
		return s
	}
}

// UBootChoose is one run of kiln's boot.scr (image/recipebuild) over the
// environment env, for an image whose slots are named slots: the slot it
// boots, whether that boot is a trial, the
// environment after its saveenv (env itself when it saves nothing) and
// what it says. A bad CRC means U-Boot's default environment: no
// boot_slot, so the script boots the first slot and saves nothing (as it
// does for a boot_slot that names no slot). On a trial the
// counter goes up (in hex, as setexpr writes it) and is saved; past
// bootlimit (default 3) boot_fallback is booted and the trial ends.
func UBootChoose(env []byte, slots []string) (slot string, trial bool, saved []byte, note string) {
	vars, err := uboot.DecodeEnv(env)
	valid := err == nil
	if !valid {
		vars = map[string]string{}
	}
	saved = env
	count, limit := hexVar(vars[uboot.VarBootCount], 0), hexVar(vars[uboot.VarBootLimit], 3)
	trial = vars[uboot.VarTrial] == "1"
	if trial {
		count++
		if count > limit {
			note = fmt.Sprintf(" (slot %s not marked good in %d boots: fallback)", vars[uboot.VarSlot], limit)
			vars[uboot.VarSlot] = vars[uboot.VarFallback]
			vars[uboot.VarTrial] = "0"
			count, trial = 0, false
		}
		vars[uboot.VarBootCount] = strconv.FormatUint(count, 16)
		if saved, err = uboot.EncodeEnv(vars, len(env)); err != nil {
			saved = env // U-Boot's saveenv fails; the boot goes on
		}
	}
	slot = slots[0]
	for _, s := range slots {
		if s == vars[uboot.VarSlot] {
			slot = s
		}
	}
	note = fmt.Sprintf(" bootcount=%d%s", count, note)
	if !valid {
		note += " (uboot.env bad CRC: U-Boot's default environment)"
	}
	return slot, trial, saved, note
}

// saveenv writes vars as U-Boot's saveenv does (whole and sorted).
func (d *Device) saveenv(vars map[string]string) {
	env, err := uboot.EncodeEnv(vars, len(d.env))
	if err != nil {
		panic(err) // the fake's own variables always fit
	}
	d.env = env
}

func hexVar(s string, def uint64) uint64 {
	if s == "" {
		return def
	}
	n, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return def
	}
	return n
}

var errCut = errors.New("abtest: power cut during the env write")

// envFile is the device's uboot.env as kiln reaches it. Called with mu
// held (inside a step). A cut write lands the chunks before the last; the
// last is lost (a card writes whole sectors) or, torn, written up to the
// middle of its changes.
type envFile struct {
	d         *Device
	cut, torn bool
}

func (d *Device) envFile(cut, torn bool) *envFile { return &envFile{d: d, cut: cut, torn: torn} }

func (e *envFile) ReadEnv(context.Context) ([]byte, error) {
	return append([]byte(nil), e.d.env...), nil
}

func (e *envFile) WriteEnv(_ context.Context, chunks []ab.EnvChunk) error {
	for i, c := range chunks {
		if c.Off < 0 || c.Off+int64(len(c.Data)) > int64(len(e.d.env)) {
			return fmt.Errorf("abtest: env write of %d bytes at %d: past the file's end", len(c.Data), c.Off)
		}
		if e.cut && i == len(chunks)-1 {
			if e.torn {
				// The sector is cut between its first and last changed byte.
				old := e.d.env[c.Off : c.Off+int64(len(c.Data))]
				lo, hi := 0, len(c.Data)
				for lo < hi && old[lo] == c.Data[lo] {
					lo++
				}
				for hi > lo && old[hi-1] == c.Data[hi-1] {
					hi--
				}
				copy(old, c.Data[:(lo+hi)/2])
			}
			return errCut
		}
		copy(e.d.env[c.Off:], c.Data)
		if e.d.corrupt && i == len(chunks)-1 {
			e.d.env[c.Off+int64(len(c.Data))-1] ^= 0x01
		}
	}
	return nil
}

package sshtest

import (
	"fmt"
	"os"

	"kiln.dev/kiln/flash/ab/abtest"
	"kiln.dev/kiln/image/disk"
)

// ubootEnv reads uboot.env from the card's partition 1 (disk.ErrNotFound:
// the card has none, its A/B is tryboot).
func (d *Device) ubootEnv() (*disk.File, error) {
	f, err := os.Open(d.PartDev(1))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return nil, err
	}
	return disk.ReadFile(disk.FromReaderAt(f, size), "uboot.env", 1<<20)
}

// ubootChoose boots as U-Boot with kiln's boot.scr: the slot uboot.env
// names, the boot counter saved onto the card; a trial slot that does not
// boot resets and is counted again until U-Boot falls back.
func (d *Device) ubootChoose(env *disk.File) (bootPart, root int, cmdline string, err error) {
	names := []string{}
	boots := map[string]int{}
	for _, s := range Slots {
		names = append(names, s["name"].(string))
		boots[s["name"].(string)] = s["boot"].(int)
	}
	for tries := 0; tries < 16; tries++ {
		slot, trial, saved, note := abtest.UBootChoose(env.Data, names)
		d.ubootLog = append(d.ubootLog, "slot "+slot+note)
		if string(saved) != string(env.Data) {
			if err := saveEnv(d.PartDev(1), env, saved); err != nil {
				return 0, 0, "", err
			}
		}
		bootPart = boots[slot]
		root, cmdline, err = func() (int, string, error) {
			_, r, c, err := d.slotBoot(bootPart)
			return r, c, err
		}()
		if err == nil || !trial {
			return bootPart, root, cmdline, err
		}
	}
	return 0, 0, "", fmt.Errorf("U-Boot never left the trial")
}

// saveEnv is U-Boot's saveenv: the file rewritten in place on the card.
func saveEnv(part string, env *disk.File, data []byte) error {
	f, err := os.OpenFile(part, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	pos := int64(0)
	for _, x := range env.Extents {
		if _, err := f.WriteAt(data[pos:pos+x.Len], x.Off); err != nil {
			return err
		}
		pos += x.Len
	}
	env.Data = data
	return f.Sync()
}

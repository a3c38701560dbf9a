package cli

import (
	"fmt"

	"kiln.dev/kiln/flash/device"
)

// diskList says where the disk listing looks (tests point it at a fake
// sysfs).
var diskList device.DiskListOptions

// autoDisk answers `kiln flash --port auto IMAGE`: kiln lists the
// removable disks, as rpi-imager does, and writes none of them: which disk
// gets an image is named by the user.
func autoDisk(e *env, asJSON bool) error {
	disks, err := device.ListDisks(diskList)
	if err != nil {
		return err
	}
	if asJSON {
		if disks == nil {
			disks = []device.LocalDisk{}
		}
		if err := e.printJSON(map[string]any{"disks": disks}); err != nil {
			return err
		}
	} else {
		for _, d := range disks {
			fmt.Fprintln(e.stdout, d)
		}
	}
	if len(disks) == 0 {
		return withHint(usagef("flash: --port auto: an image goes to a disk, and no removable disk is attached"),
			"insert the SD card (in a USB reader or the machine's slot), then give its path: kiln flash --port /dev/sdX IMAGE")
	}
	return withHint(usagef("flash: --port auto does not choose a disk for an image: %d removable disk(s) listed, nothing written", len(disks)),
		"name the card: kiln flash --port "+disks[0].Path+" IMAGE (or its /dev/disk/by-id name)")
}

// removableHints lists the removable disks, for a user whose `--port auto`
// found no serial board: an SD card may be what they meant.
func removableHints() []string {
	disks, err := device.ListDisks(diskList)
	if err != nil || len(disks) == 0 {
		return nil
	}
	hs := []string{"no serial board found; removable disks (for an image, name one with --port):"}
	for _, d := range disks {
		hs = append(hs, "  "+d.String())
	}
	return hs
}

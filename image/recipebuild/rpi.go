package recipebuild

import (
	"fmt"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/uboot"
	"kiln.dev/kiln/recipes"
)

// Where Debian's packages keep the Raspberry Pi boot files.
const (
	firmwareDir = "usr/lib/raspi-firmware"
	ubootDir    = "usr/lib/u-boot"
)

// Files kiln writes for U-Boot A/B on the first partition.
const (
	BootScript = "boot.scr"
	UBootEnv   = "uboot.env"
	UBootBin   = "u-boot.bin"
)

// rpiConfig is a board's config.txt: a comment saying what reads it, then
// the settings kiln derives from the board, then the recipe's own lines.
func rpiConfig(b *boards.Board, comment, kernel, initramfs string, extra []string) []byte {
	var w strings.Builder
	fmt.Fprintf(&w, "# kiln: %s: %s\n", b.Name, comment)
	if b.Arch == "aarch64" {
		w.WriteString("arm_64bit=1\n")
	}
	fmt.Fprintf(&w, "kernel=%s\ndevice_tree=%s\n", kernel, b.DTB)
	if initramfs != "" {
		fmt.Fprintf(&w, "initramfs %s followkernel\n", initramfs)
	}
	for _, l := range extra {
		w.WriteString(l + "\n")
	}
	return []byte(w.String())
}

// addFirmware copies the board's firmware files from the firmware input.
func (b *builder) addFirmware(t *image.Tree, board *boards.Board, rpi *recipes.ImageRPi) error {
	for _, f := range board.RPi.Firmware {
		if err := t.AddFile(f, filepath.Join(b.roots[rpi.Firmware], firmwareDir, f)); err != nil {
			return fmt.Errorf("firmware %s: %w", f, err)
		}
	}
	return nil
}

// ubootEnvVars is the environment kiln writes to uboot.env: it replaces
// U-Boot's built-in default environment whole (U-Boot imports a valid
// uboot.env without merging), so it carries the boot command and load
// addresses as well as the A/B state. Addresses (1 GiB boards): boot.scr at
// 0x02400000 (U-Boot's default scriptaddr); the kernel decompressed to
// 0x03000000 (2 MiB aligned, so booti leaves a relocatable arm64 Image in
// place, room for 64 MiB, CONFIG_SYS_BOOTM_LEN); device tree and initramfs
// above it; the compressed kernel staged at 0x10000000.
func ubootEnvVars(bootlimit int) map[string]string {
	return map[string]string{
		"bootcmd":            "load mmc 0:1 ${scriptaddr} " + BootScript + " && source ${scriptaddr}",
		"bootdelay":          "0",
		"scriptaddr":         "0x02400000",
		"kernel_addr_r":      "0x03000000",
		"fdt_addr_r":         "0x07000000",
		"ramdisk_addr_r":     "0x07100000",
		"kernel_comp_addr_r": "0x10000000",
		"kernel_comp_size":   "0x04000000",
		"boot_slot":          "a",
		"boot_fallback":      "a",
		"upgrade_available":  "0",
		"bootcount":          "0",
		"bootlimit":          fmt.Sprint(bootlimit),
	}
}

// bootScriptText is boot.scr's source: the A/B choice U-Boot makes on every
// boot, then the load and boot of the chosen slot.
func bootScriptText(board *boards.Board, rpi *recipes.ImageRPi, slots []Slot) string {
	var w strings.Builder
	w.WriteString(`# kiln boot script: U-Boot picks the A/B slot.
# uboot.env on this partition (mmc 0:1) holds the state; fw_setenv writes it:
#   boot_slot          the slot to boot
#   boot_fallback      the slot a failed trial returns to
#   upgrade_available  1 while boot_slot is on trial
#   bootcount          boots of the trial so far (hex: setexpr writes hex)
#   bootlimit          trial boots allowed (1-9) before returning to boot_fallback
# A system on trial marks itself good with
#   fw_setenv upgrade_available 0; fw_setenv bootcount 0
if test -z "${bootcount}"; then setenv bootcount 0; fi
if test -z "${bootlimit}"; then setenv bootlimit 3; fi
if test "${upgrade_available}" = "1"; then
	setexpr bootcount ${bootcount} + 1
	if test 0x${bootcount} -gt 0x${bootlimit}; then
		echo "kiln-boot: slot ${boot_slot} was not marked good in ${bootlimit} boots: back to slot ${boot_fallback}"
		setenv boot_slot ${boot_fallback}
		setenv upgrade_available 0
		setenv bootcount 0
	fi
	saveenv
fi
`)
	for i, s := range slots {
		kw := "elif"
		if i == 0 {
			kw = "if"
		}
		fmt.Fprintf(&w, "%s test \"${boot_slot}\" = \"%s\"; then\n\tsetenv kiln_boot %d\n\tsetenv kiln_root %d\n", kw, s.Name, s.Boot, s.Root)
	}
	fmt.Fprintf(&w, "else\n\techo \"kiln-boot: unknown boot_slot '${boot_slot}': booting slot %s\"\n\tsetenv boot_slot %s\n\tsetenv kiln_boot %d\n\tsetenv kiln_root %d\nfi\n",
		slots[0].Name, slots[0].Name, slots[0].Boot, slots[0].Root)
	fmt.Fprintf(&w, `echo "kiln-boot: slot ${boot_slot} (boot mmc 0:${kiln_boot}, root mmc 0:${kiln_root}) upgrade_available=${upgrade_available} bootcount=${bootcount} bootlimit=${bootlimit}"
part uuid mmc 0:${kiln_root} kiln_rootuuid
setenv bootargs "%s root=PARTUUID=${kiln_rootuuid}"
load mmc 0:${kiln_boot} ${kernel_addr_r} %s
load mmc 0:${kiln_boot} ${fdt_addr_r} %s
`, rpi.Cmdline, rpi.KernelFile(), board.DTB)
	if rpi.Initramfs != "" {
		fmt.Fprintf(&w, "load mmc 0:${kiln_boot} ${ramdisk_addr_r} %s\nbooti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr_r}\n", rpi.Initramfs)
	} else {
		w.WriteString("booti ${kernel_addr_r} - ${fdt_addr_r}\n")
	}
	// Only a failed load or boot gets here: a trial is retried (and
	// counted) by a reset; anything else stops at the prompt.
	w.WriteString(`echo "kiln-boot: booting slot ${boot_slot} failed"
if test "${upgrade_available}" = "1"; then reset; fi
`)
	return w.String()
}

// addUBoot fills the first partition for U-Boot A/B: firmware, config.txt
// starting U-Boot, U-Boot, the board's device tree (for the firmware and
// U-Boot itself), boot.scr and uboot.env.
func (b *builder) addUBoot(t *image.Tree, board *boards.Board, rpi *recipes.ImageRPi, slots []Slot, epoch int64) error {
	if err := b.addFirmware(t, board, rpi); err != nil {
		return err
	}
	cfg := rpiConfig(board, "the firmware starts U-Boot, whose boot.scr picks the A/B slot", UBootBin, "", rpi.Config)
	if err := t.AddBytes("config.txt", cfg, 0o644); err != nil {
		return err
	}
	if err := t.AddFile(UBootBin, filepath.Join(b.roots[rpi.UBoot], ubootDir, board.RPi.UBoot, UBootBin)); err != nil {
		return fmt.Errorf("u-boot: %w", err)
	}
	in, dir, _ := strings.Cut(rpi.DTBs, ":")
	if err := t.AddFile(board.DTB, filepath.Join(b.roots[in], filepath.FromSlash(dir), board.DTB)); err != nil {
		return fmt.Errorf("device tree: %w", err)
	}
	if len(slots) == 0 {
		return fmt.Errorf("U-Boot A/B needs slots")
	}
	scr, err := uboot.Script([]byte(bootScriptText(board, rpi, slots)), "kiln A/B boot script", epoch)
	if err != nil {
		return err
	}
	if err := t.AddBytes(BootScript, scr, 0o644); err != nil {
		return err
	}
	env, err := uboot.EncodeEnv(ubootEnvVars(rpi.BootLimit()), uboot.EnvSize)
	if err != nil {
		return err
	}
	return t.AddBytes(UBootEnv, env, 0o644)
}

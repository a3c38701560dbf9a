package recipebuild_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/image/uboot"
)

// bootRow is one row of the README's Raspberry Pi boot file table.
type bootRow struct {
	board, ab, part string // part: "1" or "slots"
	files           []string
}

// readmeBootTable parses the table under "### Raspberry Pi boot files".
func readmeBootTable(t *testing.T) []bootRow {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "### Raspberry Pi boot files")
	if !ok {
		t.Fatal("README.md has no \"### Raspberry Pi boot files\" section")
	}
	var rows []bootRow
	sc := bufio.NewScanner(strings.NewReader(sec))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "### ") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if !strings.HasPrefix(line, "| rpi-") || len(cells) != 4 {
			continue
		}
		r := bootRow{board: strings.TrimSpace(cells[0]), ab: strings.TrimSpace(cells[1]), part: strings.TrimSpace(cells[2])}
		for _, f := range strings.Split(cells[3], ",") {
			r.files = append(r.files, strings.TrimSpace(f))
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatal("README.md's boot file table has no rows")
	}
	return rows
}

var (
	pi4Once sync.Once
	pi4Out  string
	pi4Err  error
)

// buildPi4 builds recipes/rpi4-appliance once (without the .xz).
func buildPi4(t *testing.T) string {
	t.Helper()
	buildTwice(t) // builds the kiln binary
	pi4Once.Do(func() {
		pi4Out = filepath.Join(work, "out-pi4")
		cmd := exec.Command(filepath.Join(work, "kiln"), "image", "build", "--store", stores[0], "--out", pi4Out, "../../recipes/rpi4-appliance")
		if out, err := cmd.CombinedOutput(); err != nil {
			pi4Err = fmt.Errorf("kiln image build rpi4-appliance: %v\n%s", err, out)
		}
	})
	if pi4Err != nil {
		t.Fatal(pi4Err)
	}
	return pi4Out
}

// fatFiles lists the files at the root of a FAT partition with mtools.
func fatFiles(t *testing.T, fat string) []string {
	t.Helper()
	var files []string
	for _, l := range strings.Split(strings.TrimSpace(run(t, "mdir", "-b", "-i", fat, "::")), "\n") {
		files = append(files, strings.TrimPrefix(strings.TrimSpace(l), "::/"))
	}
	sort.Strings(files)
	return files
}

// configFiles returns the files a config.txt names: kernel=, device_tree=,
// cmdline=, start_file=, fixup_file=, initramfs NAME[,NAME], dtoverlay=NAME
// (overlays/NAME.dtbo).
func configFiles(cfg string) []string {
	var names []string
	for _, line := range strings.Split(cfg, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "initramfs "); ok {
			f := strings.Fields(rest)
			names = append(names, strings.Split(f[0], ",")...)
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "kernel", "device_tree", "cmdline", "start_file", "fixup_file":
			names = append(names, v)
		case "dtoverlay":
			n, _, _ := strings.Cut(v, ",")
			names = append(names, "overlays/"+n+".dtbo")
		}
	}
	return names
}

var scriptLoadRE = regexp.MustCompile(`(?m)^load mmc 0:\$\{kiln_boot\} \$\{\w+\} (\S+)$`)

// TestPiBootFilesMatchREADME: every Pi image kiln builds holds, for its
// board, exactly the boot files in the README's table (read with mtools,
// not kiln's own FAT reader), and config.txt and boot.scr name only files
// that exist on the partitions they are read from.
func TestPiBootFilesMatchREADME(t *testing.T) {
	rows := readmeBootTable(t)
	buildTwice(t)
	images := []string{builds[0], buildPi4(t)}
	for _, dir := range images {
		m := manifest(t, dir)
		img := filepath.Join(dir, "image.img")
		var checked int
		for _, r := range rows {
			if r.board != m.Board {
				continue
			}
			if r.ab != m.Metadata.AB {
				t.Errorf("%s: kiln.json says A/B %q, the README %q for %s", m.Name, m.Metadata.AB, r.ab, r.board)
			}
			var parts []recipebuild.MetaPartition
			for _, p := range m.Metadata.Partitions {
				if (r.part == "1" && p.Number == 1) || (r.part == "slots" && p.Slot != "" && p.Type == "fat32") {
					parts = append(parts, p)
				}
			}
			if len(parts) == 0 {
				t.Errorf("%s: no partition for row %+v", m.Name, r)
			}
			for _, p := range parts {
				checked++
				fat, _ := part(img, m, p.Name)
				got := fatFiles(t, fat)
				want := append(append([]string{}, r.files...), recipebuild.MetadataFile)
				sort.Strings(want)
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("%s partition %d (%s): files\n  %v\nREADME table plus kiln.json:\n  %v", m.Name, p.Number, p.Name, got, want)
				}
				has := map[string]bool{}
				for _, f := range got {
					has[f] = true
				}
				if has["config.txt"] {
					cfg := run(t, "mtype", "-i", fat, "::config.txt")
					for _, f := range configFiles(cfg) {
						if !has[f] {
							t.Errorf("%s partition %s: config.txt names %s, which is not there:\n%s", m.Name, p.Name, f, cfg)
						}
					}
					if !strings.Contains(cfg, "device_tree="+boardDTB(r)) {
						t.Errorf("%s partition %s: config.txt does not name the board's device tree:\n%s", m.Name, p.Name, cfg)
					}
				}
				if has[recipebuild.BootScript] {
					checkBootScript(t, img, m, fat)
				}
			}
		}
		if checked == 0 {
			t.Errorf("%s: board %s is not in the README's table", m.Name, m.Board)
		}
	}
}

// boardDTB is the device tree a row lists.
func boardDTB(r bootRow) string {
	for _, f := range r.files {
		if strings.HasSuffix(f, ".dtb") {
			return f
		}
	}
	return "?"
}

// checkBootScript reads boot.scr from the first partition and checks that
// each file it loads from a slot's boot partition is on every slot's.
func checkBootScript(t *testing.T, img string, m *recipebuild.Result, fat string) {
	t.Helper()
	dir := t.TempDir()
	run(t, "mcopy", "-n", "-i", fat, "::"+recipebuild.BootScript, dir)
	b, _ := os.ReadFile(filepath.Join(dir, recipebuild.BootScript))
	text, err := uboot.ScriptText(b)
	if err != nil {
		t.Fatal(err)
	}
	loads := scriptLoadRE.FindAllStringSubmatch(string(text), -1)
	if len(loads) < 2 {
		t.Fatalf("boot.scr loads %d files from the slot:\n%s", len(loads), text)
	}
	for _, s := range m.Metadata.Slots {
		var name string
		for _, p := range m.Metadata.Partitions {
			if p.Number == s.Boot {
				name = p.Name
			}
		}
		if !strings.Contains(string(text), fmt.Sprintf("setenv kiln_boot %d", s.Boot)) {
			t.Errorf("boot.scr never boots slot %s's partition %d", s.Name, s.Boot)
		}
		slotFat, _ := part(img, m, name)
		has := map[string]bool{}
		for _, f := range fatFiles(t, slotFat) {
			has[f] = true
		}
		for _, l := range loads {
			if !has[l[1]] {
				t.Errorf("boot.scr loads %s, which slot %s's boot partition %s does not have", l[1], s.Name, name)
			}
		}
	}
}

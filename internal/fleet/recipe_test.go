package fleet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/flash/ssh/sshtest"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/internal/store"
)

// A group can name an image recipe instead of an image: the fleet builds it
// into the store once per derivation and rolls out what it built.
func TestGroupFromRecipe(t *testing.T) {
	f := sshtest.Start(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	var builds []string
	build := StoreBuilder(st, func(format string, a ...any) {
		if line := fmt.Sprintf(format, a...); strings.HasPrefix(line, "building ") {
			builds = append(builds, line)
		}
	})
	recipe := filepath.Join(f.Dir, "appliance")
	if out, err := exec.Command("cp", "-r", "../../testdata/ab-appliance", recipe).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v1, err := build(ctx, recipe)
	if err != nil {
		t.Fatal(err)
	}
	var devices strings.Builder
	for i := 0; i < 2; i++ {
		d, err := f.AddDevice(v1)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&devices, "[[device]]\nname = \"arm-%d\"\nurl = \"ssh://root@%s/dev/mmcblk0\"\ngroup = \"arms\"\n", i+1, d.Addr)
	}
	// The declared system: the recipe with a changed file.
	os.WriteFile(filepath.Join(recipe, "rootfs/etc/motd"), []byte("version 2\n"), 0o644)
	fleetFile := filepath.Join(f.Dir, "fleet.toml")
	os.WriteFile(fleetFile, []byte(fmt.Sprintf("ssh_key = %q\nknown_hosts = %q\nhealth = \"/usr/bin/health\"\nboot_timeout = \"20s\"\n\n[[group]]\nname = \"arms\"\nrecipe = \"appliance\"\n\n%s",
		f.ClientKey, f.KnownHosts, devices.String())), 0o644)
	fl, err := Load(fleetFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Status(ctx, false); err == nil {
		t.Fatal("status of an unbuilt recipe group did not fail")
	}
	if err := fl.Resolve(ctx, build); err != nil {
		t.Fatal(err)
	}
	v2 := fl.Groups[0].Image
	drv2, err := sshdev.ImageDerivation(v2)
	if err != nil || v2 == v1 || len(builds) != 2 {
		t.Fatalf("resolved to %s (%v) after builds %q", v2, err, builds)
	}
	rep, err := fl.Deploy(ctx, helperDir, t.Logf)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	for _, r := range rep.Devices {
		if r.Outcome != Updated {
			t.Errorf("%s: %s (%s)", r.Name, r.Outcome, r.Error)
		}
	}
	status, err := fl.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range status {
		if s.Drift || s.Running != drv2 || s.Proof != "match" {
			t.Errorf("%s: %+v, want %s proven", s.Name, s, drv2)
		}
	}
	// Loading the fleet again finds the build in the store.
	fl, _ = Load(fleetFile)
	if err := fl.Resolve(ctx, build); err != nil || fl.Groups[0].Image != v2 || len(builds) != 2 {
		t.Fatalf("second resolve: %v, %s, builds %q", err, fl.Groups[0].Image, builds)
	}
	// A group with both or neither is refused.
	for _, g := range []string{"image = \"x.img\"\nrecipe = \"appliance\"", ""} {
		bad := filepath.Join(f.Dir, "bad.toml")
		os.WriteFile(bad, []byte("[[group]]\nname = \"g\"\n"+g+"\n"), 0o644)
		if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "either image or recipe") {
			t.Errorf("group with %q: %v", g, err)
		}
	}
}

package rootfs

import (
	"context"
	"reflect"
	"testing"

	"kiln.dev/kiln/internal/debian/debtest"
)

// After the essential set, dpkg is run once per batch: a package that
// pre-depends on one earlier in the same batch starts a new batch (dpkg
// unpacks it only once its pre-dependency is configured, as systemd needs
// libsystemd-shared).
func TestPreDependBatches(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, pre string) Deb {
		f := map[string]string{}
		if pre != "" {
			f["Pre-Depends"] = pre
		}
		return Deb{Name: name, Path: debtest.Build(t, dir, debtest.Deb{Name: name, Version: "1.0-1", Fields: f})}
	}
	debs := []Deb{
		mk("libshared", ""),
		mk("daemon", "libc6 (>= 2.34), libshared (= 1.0-1)"),
		mk("daemon-sysv", "daemon"),
		mk("tool", "libother | libshared:any"),
		mk("other", "libc6"),
	}
	names := []string{"0000-libshared.deb", "0001-daemon.deb", "0002-daemon-sysv.deb", "0003-tool.deb", "0004-other.deb"}
	got, err := preDependBatches(context.Background(), debs, names)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"0000-libshared.deb", "0001-daemon.deb", "0002-daemon-sysv.deb 0003-tool.deb 0004-other.deb"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("batches\n got %q\nwant %q", got, want)
	}
}

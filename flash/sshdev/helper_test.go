package sshdev

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// localRunner runs commands with the host's sh, with PATH set to path.
type localRunner struct{ path string }

func (l localRunner) Run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Env = []string{"PATH=" + l.path, "TMPDIR=" + os.Getenv("KILN_TEST_TMP")}
	c.Stdin, c.Stdout = stdin, stdout
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		return &exec.ExitError{ProcessState: c.ProcessState, Stderr: stderr.Bytes()}
	}
	return nil
}

// The helper goes into a private directory made on the device, is checked
// by hash before every run, and the check works with GNU coreutils and with
// busybox alike.
func TestHelperPrivateDirectoryAndHashCheck(t *testing.T) {
	uname, err := exec.Command("uname", "-m").Output()
	if err != nil || goarchOf[strings.TrimSpace(string(uname))] == "" {
		t.Skip("no helper architecture for this host")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (make deps installs it)")
	}
	bbDir := t.TempDir()
	for _, applet := range []string{"sh", "mktemp", "sha256sum", "cat", "chmod", "rm", "uname", "ls"} {
		os.Symlink(bb, filepath.Join(bbDir, applet))
	}
	// A stand-in helper: it answers the run check as kiln-helper does.
	helpers := t.TempDir()
	script := "#!/bin/sh\necho e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  \"$@\"\n"
	arch := goarchOf[strings.TrimSpace(string(uname))]
	os.WriteFile(filepath.Join(helpers, "kiln-helper-"+arch), []byte(script), 0o755)
	for name, path := range map[string]string{"gnu": os.Getenv("PATH"), "busybox": bbDir} {
		t.Run(name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("KILN_TEST_TMP", tmp)
			d := &device{r: localRunner{path}}
			ctx := context.Background()
			if err := d.installHelper(ctx, helpers, t.Logf); err != nil {
				t.Fatal(err)
			}
			if d.helper == "" || filepath.Dir(d.dir) != tmp || !strings.HasPrefix(d.helper, d.dir+"/") {
				t.Fatalf("helper %q in %q", d.helper, d.dir)
			}
			st, err := os.Stat(d.dir)
			if err != nil || st.Mode().Perm() != 0o700 {
				t.Fatalf("helper directory mode %v (%v)", st.Mode(), err)
			}
			if out, err := d.output(ctx, d.helperCmd("sha256", "x")); err != nil || !strings.Contains(out, "sha256 x") {
				t.Fatalf("helper run: %q %v", out, err)
			}
			// A helper changed after the upload is never run.
			os.WriteFile(d.helper, []byte("#!/bin/sh\necho swapped\n"), 0o700)
			if out, err := d.output(ctx, d.helperCmd("sha256", "x")); err == nil || strings.Contains(out, "swapped") {
				t.Fatalf("swapped helper ran: %q %v", out, err)
			}
			// A second upload gets a directory of its own.
			first := d.dir
			d2 := &device{r: localRunner{path}}
			if err := d2.installHelper(ctx, helpers, t.Logf); err != nil || d2.dir == first {
				t.Fatalf("second upload: %q %v", d2.dir, err)
			}
			d.removeHelper(ctx)
			if _, err := os.Stat(first); !os.IsNotExist(err) {
				t.Errorf("helper directory left behind: %v", err)
			}
		})
	}
}

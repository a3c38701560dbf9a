package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScripts runs the CLI contract in testdata/script/*.txtar against the
// real kiln binary: usage errors, exit codes 0/1/2/3/4 and --json shapes,
// readable in one place. In a script:
//
//	kiln ARGS...   runs kiln (prefix ! when it must fail)
//	status N       the last kiln's exit code must be N
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("HOME", env.WorkDir)
			env.Setenv("KILN_LOG", filepath.Join(env.WorkDir, "audit.jsonl"))
			env.Setenv("KILN_STORE", filepath.Join(env.WorkDir, "store"))
			env.Setenv("KILN_POLICY", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"kiln": func(ts *testscript.TestScript, neg bool, args []string) {
				cmd := exec.Command(kilnBin, args...)
				cmd.Dir = ts.Getenv("WORK")
				cmd.Env = append(os.Environ(), "HOME="+ts.Getenv("HOME"), "KILN_LOG="+ts.Getenv("KILN_LOG"),
					"KILN_STORE="+ts.Getenv("KILN_STORE"), "KILN_POLICY=", "KILN_KEY=")
				cmd.Stdout, cmd.Stderr = ts.Stdout(), ts.Stderr()
				err := cmd.Run()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					ts.Fatalf("kiln: %v", err)
				}
				ts.Setenv("KILN_STATUS", strconv.Itoa(code))
				if (code != 0) != neg {
					ts.Fatalf("kiln %v: exit %d", args, code)
				}
			},
			"status": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 {
					ts.Fatalf("usage: status N")
				}
				if got := ts.Getenv("KILN_STATUS"); (got == args[0]) == neg {
					ts.Fatalf("%s", fmt.Sprintf("exit status %s, want %s", got, args[0]))
				}
			},
		},
	})
}

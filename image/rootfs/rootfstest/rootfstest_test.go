package rootfstest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	d := Difference{Path: "etc/ssh/ssh_host_*|var/lib/apt/...|etc/hostname"}
	for p, want := range map[string]bool{
		"etc/ssh/ssh_host_ed25519_key":     true,
		"etc/ssh/ssh_host_ed25519_key.pub": true,
		"etc/ssh/sshd_config":              false,
		"var/lib/apt":                      true,
		"var/lib/apt/lists/lock":           true,
		"var/lib/aptitude":                 false,
		"etc/hostname":                     true,
		"etc/hostname-":                    false,
	} {
		if got := d.Match(p); got != want {
			t.Errorf("%q matches %s: %v, want %v", d.Path, p, got, want)
		}
	}
}

// Compare: a difference in anything but the time needs an entry; an entry
// that explains nothing is stale.
func TestCompare(t *testing.T) {
	f := Entry{Kind: "file", Mode: 0o644, Size: 1, SHA256: "aa", Mtime: 1}
	kiln := Tree{"a": f, "b": f, "only-kiln": f, "c": f}
	g := f
	g.Mtime = 99
	h := f
	h.Mode = 0o600
	mm := Tree{"a": g, "b": h, "only-mm": f, "c": h}
	known := []Difference{{Path: "b", Why: "mode"}, {Path: "only-*", Why: "either side"}, {Path: "stale", Why: "nothing"}}
	r := Compare(kiln, mm, known)
	if len(r.Unexplained) != 1 || !strings.HasPrefix(r.Unexplained[0], "c: ") {
		t.Errorf("unexplained: %q", r.Unexplained)
	}
	if len(r.Explained[0]) != 1 || len(r.Explained[1]) != 2 {
		t.Errorf("explained: %q", r.Explained)
	}
	if !reflect.DeepEqual(r.Stale, known[2:]) {
		t.Errorf("stale: %v", r.Stale)
	}
}

func writeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, text := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// RenumberedGroups explains exactly a renumbering: account files equal once
// renumbered, and files differing in their group's number alone.
func TestRenumberedGroups(t *testing.T) {
	k := writeRoot(t, map[string]string{
		"etc/group":   "root:x:0:\nmessagebus:x:101:\n_ssh:x:102:\n",
		"etc/gshadow": "root:*::\nmessagebus:!::\n_ssh:!::\n",
		"etc/passwd":  "root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n",
	})
	m := writeRoot(t, map[string]string{
		"etc/group":   "root:x:0:\n_ssh:x:101:\nmessagebus:x:102:\n",
		"etc/gshadow": "root:*::\n_ssh:!::\nmessagebus:!::\n",
		"etc/passwd":  "root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:102::/nonexistent:/usr/sbin/nologin\n",
	})
	kt, mt := Walk(t, k), Walk(t, m)
	agent := Entry{Kind: "file", Mode: 0o755, GID: 102, Size: 1, SHA256: "aa"}
	kt["usr/bin/ssh-agent"] = agent
	agent.GID = 101
	mt["usr/bin/ssh-agent"] = agent
	helper := Entry{Kind: "file", Mode: 0o4754, GID: 101, Size: 1, SHA256: "bb"}
	kt["helper"] = helper
	helper.GID, helper.Mode = 102, 0o755 // and another mode: not a renumbering alone
	mt["helper"] = helper
	var got []string
	for _, d := range RenumberedGroups(t, k, m, kt, mt) {
		got = append(got, d.Path)
	}
	want := map[string]bool{"etc/group": true, "etc/gshadow": true, "etc/passwd": true, "usr/bin/ssh-agent": true}
	if len(got) != len(want) {
		t.Errorf("explained %q, want %v", got, want)
	}
	for _, p := range got {
		if !want[p] {
			t.Errorf("explained %s", p)
		}
	}

	// A group only one root has is no renumbering.
	if err := os.WriteFile(filepath.Join(m, "etc/group"), []byte("root:x:0:\n_ssh:x:101:\nmessagebus:x:102:\nkvm:x:103:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ds := RenumberedGroups(t, k, m, kt, mt); ds != nil {
		t.Errorf("with a group only mmdebstrap has: %v", ds)
	}
}

package fetch

import "testing"

func TestInRoot(t *testing.T) {
	for _, c := range []struct{ rel, target, want string }{
		{"hostroot", "/", "."},
		{"a/b/link", "/etc/passwd", "../../etc/passwd"},
		{"a/link", "../../../../etc/shadow", "../etc/shadow"},
		{"usr/lib/arm-none-eabi/lib", "newlib", "newlib"},
		{"usr/lib/arm-none-eabi/include", "../../include/newlib", "../../include/newlib"},
		{"a/link", "../b", "../b"},
		{"link", "..", "."},
	} {
		if got := inRoot(c.rel, c.target); got != c.want {
			t.Errorf("inRoot(%q, %q) = %q, want %q", c.rel, c.target, got, c.want)
		}
	}
}

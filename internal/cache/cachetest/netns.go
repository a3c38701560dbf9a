package cachetest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// Net is a set of "machines": network namespaces joined by a bridge that
// lives in the server namespace. A machine reaches the server's address and
// nothing else (no route out, so no Debian mirror).
type Net struct {
	Server   string // the server namespace
	ServerIP string
	name     string
	subnet   int
	next     atomic.Int32
}

var netSeq atomic.Int32

// CanNetns reports whether network namespaces can be made here (root,
// ip(8) installed).
func CanNetns() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return err
	}
	return nil
}

// NewNet makes the server namespace and its bridge; everything is removed
// at the end of the test.
func NewNet(t testing.TB) *Net {
	t.Helper()
	if err := CanNetns(); err != nil {
		t.Skipf("network namespaces need root and ip(8): %v", err)
	}
	seq := netSeq.Add(1)
	n := &Net{name: fmt.Sprintf("kc%d-%d", os.Getpid()%100000, seq), subnet: 100 + (os.Getpid()+int(seq))%150}
	n.Server = n.name + "-srv"
	n.ServerIP = fmt.Sprintf("10.%d.0.1", n.subnet)
	t.Cleanup(func() {
		for i := int32(1); i <= n.next.Load(); i++ {
			exec.Command("ip", "netns", "del", fmt.Sprintf("%s-m%d", n.name, i)).Run()
		}
		exec.Command("ip", "netns", "del", n.Server).Run()
	})
	run(t, "ip", "netns", "add", n.Server)
	run(t, "ip", "-n", n.Server, "link", "set", "lo", "up")
	run(t, "ip", "-n", n.Server, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", n.Server, "addr", "add", n.ServerIP+"/16", "dev", "br0")
	run(t, "ip", "-n", n.Server, "link", "set", "br0", "up")
	return n
}

// Machine makes a new namespace on the bridge and returns its name.
func (n *Net) Machine(t testing.TB) string {
	t.Helper()
	i := n.next.Add(1)
	ns := fmt.Sprintf("%s-m%d", n.name, i)
	veth := fmt.Sprintf("v%s%d", strings.ReplaceAll(n.name, "-", ""), i)
	if len(veth) > 13 {
		veth = veth[len(veth)-13:]
	}
	run(t, "ip", "netns", "add", ns)
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", n.Server, "link", "add", veth+"a", "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(t, "ip", "-n", n.Server, "link", "set", veth+"a", "master", "br0")
	run(t, "ip", "-n", n.Server, "link", "set", veth+"a", "up")
	run(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.%d.%d.%d/16", n.subnet, 1+i/200, 2+i%200), "dev", "eth0")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	return ns
}

// Command is cmd run in namespace ns.
func Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

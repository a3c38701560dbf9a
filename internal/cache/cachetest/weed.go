// Package cachetest runs the real components the binary cache is tested
// against: SeaweedFS's S3 gateway (built from its Go module and kept
// outside the checkout, keyed by version), nginx serving the bucket
// read-only over HTTPS with a test CA, and "machines" as network
// namespaces joined by a bridge.
package cachetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"
)

// WeedModule is the SeaweedFS version the tests run.
const WeedModule = "github.com/seaweedfs/seaweedfs@v0.0.0-20261109003541-7506e5f91cd6"

// Credentials of the test gateway's writer identity.
const (
	AccessKey = "kiln-test-writer"
	SecretKey = "kiln-test-secret-0123456789abcdef"
	Bucket    = "kiln-cache"
)

// WeedPath is where the weed binary of WeedModule is kept.
func WeedPath() string {
	dir := os.Getenv("KILN_TEST_CACHE")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "kiln-test")
	}
	_, ver, _ := strings.Cut(WeedModule, "@")
	return filepath.Join(dir, "seaweedfs-"+ver, "weed")
}

// BuildWeed builds the weed binary if it is not there yet: go mod download
// the module, then go build ./weed inside it (go install refuses it: its
// go.mod has replace directives). About 8 minutes on 2 cores; a lock keeps
// concurrent test binaries from building it twice.
func BuildWeed(ctx context.Context) (string, error) {
	bin := WeedPath()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(bin+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", WeedModule).Output()
	if err != nil {
		return "", fmt.Errorf("cachetest: go mod download %s: %w", WeedModule, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("cachetest: go mod download %s: no directory", WeedModule)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s", "-o", bin+".tmp", "./weed")
	cmd.Dir = mod.Dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cachetest: go build ./weed in %s: %w: %s", mod.Dir, err, lastLines(stderr.String(), 5))
	}
	return bin, os.Rename(bin+".tmp", bin)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// Weed is a running `weed server -s3`: master, volume, filer and the S3
// gateway, with a writer identity (AccessKey/SecretKey) and anonymous
// read-only access, so unauthenticated writes are refused.
type Weed struct {
	Dir  string // data directory (kept across Kill and Start)
	IP   string // address the gateway is reached at
	Port int    // the S3 port
	NS   string // network namespace it runs in ("" = this one)

	bin   string
	args  []string
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	log   *os.File
	ports []int
}

// Endpoint is the gateway's URL.
func (w *Weed) Endpoint() string { return fmt.Sprintf("http://%s:%d", w.IP, w.Port) }

// URL is the s3:// cache URL of the test bucket under prefix.
func (w *Weed) URL(prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&region=us-east-1", Bucket, prefix, w.Endpoint())
}

// StartWeed builds (if needed) and starts a gateway on free ports of ip in
// network namespace ns ("" = this one), creates the bucket, and stops it at
// the end of the test. It skips the test where weed cannot be built.
func StartWeed(t testing.TB, ns, ip string) *Weed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bin, err := BuildWeed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w := &Weed{Dir: dir, IP: ip, NS: ns, bin: bin}
	cfg := map[string]any{"identities": []any{
		map[string]any{"name": "anonymous", "actions": []string{"Read"}},
		map[string]any{"name": "kiln-writer", "credentials": []any{map[string]string{"accessKey": AccessKey, "secretKey": SecretKey}},
			"actions": []string{"Admin", "Read", "List", "Tagging", "Write"}},
	}}
	data, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "s3.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "data"), 0o755)
	ports := freePorts(t, 8)
	w.Port = ports[3]
	w.args = []string{"server", "-dir=" + filepath.Join(dir, "data"), "-ip=" + ip, "-ip.bind=0.0.0.0",
		"-master.port=" + strconv.Itoa(ports[0]), "-master.port.grpc=" + strconv.Itoa(ports[4]),
		"-volume.port=" + strconv.Itoa(ports[1]), "-volume.port.grpc=" + strconv.Itoa(ports[5]),
		"-filer.port=" + strconv.Itoa(ports[2]), "-filer.port.grpc=" + strconv.Itoa(ports[6]),
		"-s3", "-s3.port=" + strconv.Itoa(ports[3]), "-s3.port.grpc=" + strconv.Itoa(ports[7]),
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + filepath.Join(dir, "s3.json"),
		"-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=256",
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Kill() })
	c := w.Client()
	err = retryFor(ctx, 60*time.Second, func() error { return c.MakeBucket(ctx, Bucket, minio.MakeBucketOptions{Region: "us-east-1"}) })
	if err != nil {
		t.Fatalf("cachetest: make bucket: %v (log %s: %s)", err, w.log.Name(), w.Log())
	}
	return w
}

// Client is a minio client with the writer's credentials; it connects from
// the gateway's namespace.
func (w *Weed) Client() *minio.Client {
	tr := &http.Transport{DialContext: DialIn(w.NS)}
	c, _ := minio.New(fmt.Sprintf("%s:%d", w.IP, w.Port), &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath, Transport: tr})
	return c
}

// DialIn returns a dialer whose connections are made from network
// namespace ns ("" = this one): the socket is created on a thread that
// joined ns and is thrown away afterwards.
func DialIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if ns == "" {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			// The thread goes back to this process's namespace afterwards;
			// if it cannot, it stays locked and ends with the goroutine.
			runtime.LockOSThread()
			home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer home.Close()
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, err}
				return
			}
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
			if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// Log returns the tail of the server's output.
func (w *Weed) Log() string {
	data, _ := os.ReadFile(filepath.Join(w.Dir, "weed.log"))
	return lastLines(string(data), 15)
}

// Start (re)starts the server on the same ports and data.
func (w *Weed) Start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	args := append([]string{w.bin}, w.args...)
	if w.NS != "" {
		args = append([]string{"ip", "netns", "exec", w.NS}, args...)
	}
	log, err := os.OpenFile(filepath.Join(w.Dir, "weed.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	// No Pdeathsig: it fires when the forking thread ends, not the process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("cachetest: start weed: %w", err)
	}
	w.cmd, w.log, w.done = cmd, log, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(w.done)
	// Ready when the gateway answers.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	return retryFor(ctx, 90*time.Second, func() error {
		select {
		case <-w.done:
			return fmt.Errorf("cachetest: weed exited: %s", w.Log())
		default:
		}
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := DialIn(w.NS)(dctx, "tcp", fmt.Sprintf("%s:%d", w.IP, w.Port))
		if err != nil {
			return err
		}
		conn.Close()
		return nil
	})
}

// Kill stops the server at once (SIGKILL to its process group), as a
// crash or a power cut would.
func (w *Weed) Kill() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return
	}
	syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	<-w.done
	w.log.Close()
	w.cmd = nil
}

// retryFor calls fn until it succeeds or d passes, polling every 200 ms.
func retryFor(ctx context.Context, d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// freePorts returns n ports nothing listens on (below 55535, so the gRPC
// convention port+10000 stays valid too).
func freePorts(t testing.TB, n int) []int {
	var ls []net.Listener
	var ports []int
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		if p := l.Addr().(*net.TCPAddr).Port; p < 55535 {
			ports = append(ports, p)
		}
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

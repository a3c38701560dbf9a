package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// ErrNoKey means kiln has no private key to offer (no --ssh-key, no agent,
// no ~/.ssh/id_*): kiln never asks for a password.
var ErrNoKey = errors.New("no key")

// ErrHostKey means the device's host key is unknown or differs from known_hosts.
var ErrHostKey = errors.New("host key verification failed")

// Runner runs one shell command on a device. It is all the protocol code needs.
type Runner interface {
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error
}

// Addr is a parsed ssh://user@host[:port]/path port spec.
type Addr struct {
	User, Host string
	Port       int
	Path       string // a block device, e.g. /dev/mmcblk0 or /dev/sdb
}

func (a Addr) hostPort() string { return net.JoinHostPort(a.Host, strconv.Itoa(a.Port)) }

func (a Addr) String() string {
	return fmt.Sprintf("ssh://%s@%s%s", a.User, a.hostPort(), a.Path)
}

// ParseAddr parses ssh://user@host[:port]/path. The user defaults to root and
// the port to 22.
func ParseAddr(spec string) (Addr, error) {
	u, err := url.Parse(spec)
	if err != nil || u.Scheme != "ssh" || u.Host == "" {
		return Addr{}, fmt.Errorf("ssh: %q is not of the form ssh://user@host[:port]/dev/DEVICE", spec)
	}
	a := Addr{User: "root", Host: u.Hostname(), Port: 22, Path: u.Path}
	if u.User != nil && u.User.Username() != "" {
		a.User = u.User.Username()
	}
	if _, ok := u.User.Password(); ok {
		return Addr{}, fmt.Errorf("ssh: %s: passwords are not accepted; use a key", spec)
	}
	if p := u.Port(); p != "" {
		if a.Port, err = strconv.Atoi(p); err != nil {
			return Addr{}, fmt.Errorf("ssh: %s: bad port %q", spec, p)
		}
	}
	return a, nil
}

// Options says how to authenticate. There is never a password prompt and
// never an insecure host key callback.
type Options struct {
	KnownHosts string   // default ~/.ssh/known_hosts
	KeyFiles   []string // private keys; default: the agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa
	Timeout    time.Duration
	// Silence is how long a connected device may leave SSH keepalives
	// unanswered before kiln drops the connection (ErrConnLost); default 30s.
	// A device that loses power mid-write sends nothing at all, and TCP alone
	// would wait for its retransmission timeout, many minutes.
	Silence time.Duration
}

// Client is an SSH connection to one device.
type Client struct {
	addr   Addr
	c      *gossh.Client
	done   chan struct{}
	gone   chan struct{} // closed when the connection is
	silent atomic.Bool   // dropped because the device stopped answering
	once   sync.Once
}

// Dial connects to the device, verifying its host key against known_hosts.
func Dial(ctx context.Context, a Addr, opts Options) (*Client, error) {
	cfg, err := clientConfig(a, opts)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", a.hostPort())
	if err != nil {
		return nil, fmt.Errorf("ssh: dial %s: %w", a.hostPort(), err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(cfg.Timeout))
	}
	cc, chans, reqs, err := gossh.NewClientConn(conn, a.hostPort(), cfg.ClientConfig)
	if err != nil {
		conn.Close()
		var kerr *knownhosts.KeyError
		if errors.As(err, &kerr) {
			if len(kerr.Want) == 0 {
				return nil, fmt.Errorf("ssh: %s: %w: the host is not in %s", a.hostPort(), ErrHostKey, cfg.knownHosts)
			}
			return nil, fmt.Errorf("ssh: %s: %w: the host key CHANGED (known_hosts %s:%d)", a.hostPort(), ErrHostKey, kerr.Want[0].Filename, kerr.Want[0].Line)
		}
		return nil, fmt.Errorf("ssh: %s: %w", a.hostPort(), err)
	}
	conn.SetDeadline(time.Time{})
	c := &Client{addr: a, c: gossh.NewClient(cc, chans, reqs), done: make(chan struct{}), gone: make(chan struct{})}
	go func() {
		c.c.Wait()
		close(c.gone)
	}()
	silence := opts.Silence
	if silence == 0 {
		silence = 30 * time.Second
	}
	go c.keepAlive(silence)
	return c, nil
}

// keepAlive asks the device for a keepalive reply every quarter of silence
// and drops the connection when none comes within silence.
func (c *Client) keepAlive(silence time.Duration) {
	tick := time.NewTicker(silence / 4)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := c.c.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case err := <-reply:
			if err != nil {
				return // the connection is gone already
			}
		case <-time.After(silence):
			c.silent.Store(true)
			c.c.Close()
			return
		case <-c.done:
			return
		}
	}
}

type config struct {
	*gossh.ClientConfig
	knownHosts string
}

func clientConfig(a Addr, opts Options) (config, error) {
	home, _ := os.UserHomeDir()
	kh := opts.KnownHosts
	if kh == "" {
		kh = filepath.Join(home, ".ssh", "known_hosts")
	}
	hostKeys, err := knownhosts.New(kh)
	if err != nil {
		return config{}, fmt.Errorf("ssh: known hosts: %w", err)
	}
	var signers []gossh.Signer
	if len(opts.KeyFiles) == 0 {
		if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
			if c, err := net.Dial("unix", sock); err == nil {
				if s, err := agent.NewClient(c).Signers(); err == nil {
					signers = append(signers, s...)
				}
			}
		}
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			if s, err := loadKey(filepath.Join(home, ".ssh", n)); err == nil {
				signers = append(signers, s)
			}
		}
	}
	for _, f := range opts.KeyFiles {
		s, err := loadKey(f)
		if err != nil {
			return config{}, err
		}
		signers = append(signers, s)
	}
	if len(signers) == 0 {
		return config{}, fmt.Errorf("ssh: %w: give --ssh-key or run an ssh agent", ErrNoKey)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	return config{&gossh.ClientConfig{
		User:            a.User,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signers...)},
		HostKeyCallback: hostKeys,
		Timeout:         timeout,
	}, kh}, nil
}

func loadKey(path string) (gossh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh: key: %w", err)
	}
	s, err := gossh.ParsePrivateKey(data)
	if err != nil {
		var pp *gossh.PassphraseMissingError
		if errors.As(err, &pp) {
			return nil, fmt.Errorf("ssh: key %s is encrypted: load it into an ssh agent (kiln never prompts)", path)
		}
		return nil, fmt.Errorf("ssh: key %s: %w", path, err)
	}
	return s, nil
}

// Addr returns where the client is connected.
func (c *Client) Addr() Addr { return c.addr }

// Close closes the connection.
func (c *Client) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.c.Close()
}

// Run runs cmd on the device. stdout may be nil. A non-zero exit is an error
// carrying the command's stderr.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	s, err := c.newSession(ctx)
	if err != nil {
		if c.silent.Load() {
			return fmt.Errorf("ssh: %s: the device stopped answering: %w", c.addr.Host, ErrConnLost)
		}
		return fmt.Errorf("ssh: %s: session: %w", c.addr.Host, err)
	}
	defer s.Close()
	var stderr bytes.Buffer
	s.Stdin, s.Stdout, s.Stderr = stdin, stdout, &stderr
	if err := s.Start(cmd); err != nil {
		return fmt.Errorf("ssh: %s: %w", c.addr.Host, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Signal(gossh.SIGKILL)
		s.Close()
		return ctx.Err()
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		var ee *gossh.ExitError
		var em *gossh.ExitMissingError
		switch {
		case errors.As(err, &ee):
			return &ExitError{Host: c.addr.Host, Cmd: short(cmd), Status: ee.ExitStatus(), Stderr: msg}
		case c.silent.Load():
			return fmt.Errorf("ssh: %s: %s: the device stopped answering: %w", c.addr.Host, short(cmd), ErrConnLost)
		case errors.As(err, &em), errors.Is(err, io.EOF):
			return fmt.Errorf("ssh: %s: %s: connection lost: %w", c.addr.Host, short(cmd), ErrConnLost)
		}
		return fmt.Errorf("ssh: %s: %s: %w", c.addr.Host, short(cmd), err)
	}
	return nil
}

// newSession opens a session, giving up when the connection goes or ctx
// ends: x/crypto/ssh's NewSession can wait forever for the answer to a
// channel open sent as the connection died (its channels were dropped
// before this one was added).
func (c *Client) newSession(ctx context.Context) (*gossh.Session, error) {
	type result struct {
		s   *gossh.Session
		err error
	}
	r := make(chan result, 1)
	go func() {
		s, err := c.c.NewSession()
		r <- result{s, err}
	}()
	select {
	case res := <-r:
		return res.s, res.err
	case <-c.gone:
		select {
		case res := <-r: // it may have finished as the connection went
			if res.err == nil {
				res.s.Close()
			}
		default:
		}
		return nil, ErrConnLost
	case <-ctx.Done():
		go func() {
			if res := <-r; res.err == nil {
				res.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// ExitError is a command that ran on the device and exited non-zero.
// Stderr is the last line it wrote there.
type ExitError struct {
	Host, Cmd string
	Status    int
	Stderr    string
}

func (e *ExitError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("ssh: %s: %s: exit %d", e.Host, e.Cmd, e.Status)
	}
	return fmt.Sprintf("ssh: %s: %s: exit %d: %s", e.Host, e.Cmd, e.Status, e.Stderr)
}

// ErrConnLost means the connection dropped while a command ran.
var ErrConnLost = errors.New("connection lost")

func short(cmd string) string {
	if len(cmd) > 40 {
		return cmd[:40] + "…"
	}
	return cmd
}

// Output runs cmd and returns its stdout.
func Output(ctx context.Context, r Runner, cmd string) ([]byte, error) {
	var out bytes.Buffer
	err := r.Run(ctx, cmd, nil, &out)
	return out.Bytes(), err
}

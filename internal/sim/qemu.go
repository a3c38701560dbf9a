package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QEMU is the emulator kiln runs Cortex-M boards on.
const QEMU = "qemu-system-arm"

// icountShift is QEMU's -icount shift nearest the board's clock: one
// instruction every 2^shift ns.
func icountShift(hz int64) int {
	s := int(math.Round(math.Log2(1e9 / float64(hz))))
	return max(0, min(s, 10))
}

// runQEMU runs the image on the board's QEMU machine with the console USART
// on pipes. The VM starts paused; kiln connects to its QMP socket, starts
// it, and reads the instruction count (query-replay) until the simulated
// time is reached.
func runQEMU(ctx context.Context, opts Options) (*Result, error) {
	b := opts.Board
	bin, err := exec.LookPath(QEMU)
	if err != nil {
		return nil, fmt.Errorf("sim: %s: %w: %s is not installed", b.Name, ErrNoModel, QEMU)
	}
	dir, err := os.MkdirTemp("", "kiln-qemu-")
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	defer os.RemoveAll(dir)
	base, flat := opts.Artifact.Image.Flat(0xff)
	imgFile := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(imgFile, flat, 0o644); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	sock := filepath.Join(dir, "qmp.sock")
	shift := icountShift(b.CPUHz)
	args := []string{
		"-M", b.Sim.Machine, "-nodefaults", "-display", "none", "-S",
		"-icount", fmt.Sprintf("shift=%d,sleep=off,align=off", shift),
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-chardev", "stdio,id=console,signal=off",
	}
	for i := 0; i < b.Sim.UART; i++ {
		args = append(args, "-serial", "null")
	}
	args = append(args, "-serial", "chardev:console",
		// The exact bytes a flasher writes, at the board's flash base.
		"-device", fmt.Sprintf("loader,file=%s,addr=0x%x,force-raw=on", imgFile, base))
	cmd := exec.Command(bin, args...)
	// QEMU dies with kiln: killed by a signal (a closed stdout pipe), kiln
	// runs no deferred clean-up, and QEMU would run on, flat out.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if opts.Stderr != nil {
		cmd.Stderr = io.MultiWriter(&stderr, opts.Stderr)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sim: %s: %w", QEMU, err)
	}
	exited := make(chan struct{})
	var waitErr error
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	res := &Result{
		Engine: "qemu " + b.Sim.Machine, Board: b.Name, ImageSHA256: opts.Artifact.Image.SHA256(), AppAt: -1,
		Clock: fmt.Sprintf("QEMU icount: one instruction every %d ns", 1<<shift),
	}
	var mu sync.Mutex
	var now time.Duration // simulated time last read
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		r := bufio.NewReader(out)
		for {
			c, err := r.ReadByte()
			if err != nil {
				return
			}
			mu.Lock()
			res.UART = append(res.UART, c)
			res.Frames = append(res.Frames, Frame{At: now, Byte: c})
			if opts.UART != nil {
				opts.UART.Write([]byte{c})
			}
			mu.Unlock()
		}
	}()
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()

	q, err := dialQMP(ctx, sock, exited)
	if err != nil {
		return nil, fmt.Errorf("sim: %s: qmp: %w %s", QEMU, err, strings.TrimSpace(stderr.String()))
	}
	defer q.Close()
	if opts.Input != nil {
		go func() {
			io.Copy(in, opts.Input)
		}()
	}
	start := time.Now()
	if err := q.do("cont", nil); err != nil {
		return nil, fmt.Errorf("sim: %s: start: %w", QEMU, err)
	}
	// Poll the instruction count, more often as the end comes near: the
	// next poll is due when about half the remaining simulated time will
	// have passed at the rate seen so far (100 us to 20 ms apart).
	var icount uint64
	wait := time.NewTimer(100 * time.Microsecond)
	defer wait.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-exited:
			return nil, fmt.Errorf("sim: %s exited: %v %s", QEMU, waitErr, strings.TrimSpace(stderr.String()))
		case <-wait.C:
		}
		var rep struct {
			ICount uint64 `json:"icount"`
		}
		if err := q.do("query-replay", &rep); err != nil {
			return nil, fmt.Errorf("sim: %s: query-replay: %w", QEMU, err)
		}
		icount = rep.ICount
		mu.Lock()
		now = time.Duration(icount << shift)
		mu.Unlock()
		if opts.For > 0 && now >= opts.For {
			done = true
		}
		next := 20 * time.Millisecond
		if opts.For > 0 && now == 0 {
			next = 0 // not started yet: no rate to go by
		} else if elapsed := time.Since(start); opts.For > 0 {
			rate := float64(now) / float64(elapsed) // simulated per wall
			next = min(next, time.Duration(float64(opts.For-now)/rate/2))
		}
		wait.Reset(max(next, 100*time.Microsecond))
	}
	q.do("stop", nil)
	res.Wall = time.Since(start)
	var rep struct {
		ICount uint64 `json:"icount"`
	}
	if err := q.do("query-replay", &rep); err == nil {
		icount = rep.ICount
	}
	q.do("quit", nil)
	in.Close()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
	}
	<-copied
	mu.Lock()
	defer mu.Unlock()
	res.Simulated = time.Duration(icount << shift)
	return res, nil
}

// qmp is a QEMU Machine Protocol client: one command at a time.
type qmp struct {
	conn net.Conn
	dec  *json.Decoder
}

// dialQMP connects to QEMU's QMP socket once it exists and negotiates
// capabilities; it gives up when QEMU exits or ctx ends.
func dialQMP(ctx context.Context, sock string, exited <-chan struct{}) (*qmp, error) {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			q := &qmp{conn: conn, dec: json.NewDecoder(conn)}
			var greeting map[string]any
			if err := q.dec.Decode(&greeting); err != nil {
				conn.Close()
				return nil, err
			}
			if err := q.do("qmp_capabilities", nil); err != nil {
				conn.Close()
				return nil, err
			}
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-exited:
			return nil, errors.New("QEMU exited before its QMP socket opened")
		case <-deadline.C:
			return nil, fmt.Errorf("no QMP socket: %w", err)
		case <-poll.C:
		}
	}
}

func (q *qmp) Close() error { return q.conn.Close() }

// do runs one command and decodes its return value into ret (if not nil),
// skipping asynchronous events.
func (q *qmp) do(cmd string, ret any) error {
	q.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(q.conn, `{"execute":%s}`+"\n", strconv.Quote(cmd)); err != nil {
		return err
	}
	for {
		var msg struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := q.dec.Decode(&msg); err != nil {
			return err
		}
		switch {
		case msg.Event != "":
			continue
		case msg.Error != nil:
			return fmt.Errorf("%s: %s", msg.Error.Class, msg.Error.Desc)
		}
		if ret != nil {
			return json.Unmarshal(msg.Return, ret)
		}
		return nil
	}
}

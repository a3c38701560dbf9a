package sshdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// deltaWrite writes r's n bytes to dev through the helper's one-pass delta
// (devhelper.Delta): the device reads its blocks once, reports those whose
// sums differ from sums, takes their new bytes as kiln streams them, and
// ends with its SHA-256 of the range. It returns that hash and how many
// blocks were written.
func (d *device) deltaWrite(ctx context.Context, dev string, r io.ReaderAt, n, bs int64, sums []uint64, progress func(int64)) (string, int, error) {
	list := make([]byte, 8*len(sums))
	for i, s := range sums {
		binary.BigEndian.PutUint64(list[8*i:], s)
	}
	pr, pw := io.Pipe()
	want := make(chan int64, len(sums))
	out := &deltaOutput{nblocks: int64(len(sums)), want: want, next: -1, progress: progress}
	done := make(chan struct{})
	sent := make(chan error, 1)
	var blockBytes int64 // the sender's count: SSH's stdin copy may outlive Run
	go func() {
		// Send each block the device asks for, in the order it asks.
		buf := make([]byte, bs)
		for {
			select {
			case i, ok := <-want:
				if !ok {
					sent <- pw.Close()
					return
				}
				b := buf[:min(bs, n-i*bs)]
				if _, err := r.ReadAt(b, i*bs); err != nil {
					pw.CloseWithError(err)
					sent <- err
					return
				}
				if _, err := pw.Write(b); err != nil {
					sent <- err
					return
				}
				blockBytes += int64(len(b))
			case <-done:
				sent <- nil
				return
			}
		}
	}()
	err := d.r.Run(ctx, d.helperCmd("delta", dev, fmt.Sprint(n), fmt.Sprint(bs)), io.MultiReader(bytes.NewReader(list), pr), out)
	close(done)
	pw.CloseWithError(io.ErrClosedPipe)
	serr := <-sent
	d.sent.Add(int64(len(list)) + blockBytes)
	switch {
	case err != nil:
		return "", 0, fmt.Errorf("delta write %s: %w", dev, err)
	case out.err != nil:
		return "", 0, fmt.Errorf("delta write %s: %w", dev, out.err)
	case serr != nil:
		return "", 0, fmt.Errorf("delta write %s: %w", dev, serr)
	case out.sum == "":
		return "", 0, fmt.Errorf("delta write %s: the device gave no hash", dev)
	case out.written != out.asked:
		return "", 0, fmt.Errorf("delta write %s: the device asked for %d blocks and wrote %d", dev, out.asked, out.written)
	}
	return out.sum, out.written, nil
}

// deltaOutput parses the helper's delta report as it arrives.
type deltaOutput struct {
	nblocks  int64
	want     chan<- int64
	next     int64 // last block asked for
	line     []byte
	asked    int
	written  int
	sum      string
	err      error
	progress func(int64)
	stopped  bool
}

func (o *deltaOutput) Write(p []byte) (int, error) {
	for _, c := range p {
		if c != '\n' {
			if len(o.line) > 256 { // no report line is this long: a hostile or broken device
				if o.err == nil {
					o.err = fmt.Errorf("a report line longer than %d bytes", 256)
					o.stop()
				}
				return 0, o.err
			}
			o.line = append(o.line, c)
			continue
		}
		o.parse(string(o.line))
		o.line = o.line[:0]
	}
	return len(p), nil
}

// stop tells the sender no more blocks will be asked for.
func (o *deltaOutput) stop() {
	if !o.stopped {
		o.stopped = true
		close(o.want)
	}
}

func (o *deltaOutput) parse(line string) {
	if o.err != nil {
		return
	}
	var i int64
	var k int
	var sum string
	switch {
	case o.sum != "":
		o.err = fmt.Errorf("output after the hash: %q", line)
	case strings.HasPrefix(line, "d "):
		if _, err := fmt.Sscanf(line, "d %d", &i); err != nil || i <= o.next || i >= o.nblocks {
			o.err = fmt.Errorf("bad block report %q", line)
			o.stop()
			return
		}
		o.next, o.asked = i, o.asked+1
		o.want <- i
	case strings.HasPrefix(line, "p "):
		if _, err := fmt.Sscanf(line, "p %d", &i); err == nil && o.progress != nil {
			o.progress(i)
		}
	case strings.HasPrefix(line, "= "):
		if _, err := fmt.Sscanf(line, "= %d %s", &k, &sum); err != nil || len(sum) != 64 {
			o.err = fmt.Errorf("bad result %q", line)
			return
		}
		o.written, o.sum = k, sum
		o.stop()
	default:
		o.err = fmt.Errorf("unexpected output %q", line)
	}
}

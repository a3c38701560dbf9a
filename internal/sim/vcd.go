package sim

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"time"
)

// WriteVCD writes the run as a value-change dump (IEEE 1364 §18) that
// GTKWave opens: one 1-bit wire per recorded pin, the console's transmit
// line as it looks on the wire (idle high, start bit, data bits LSB first,
// stop bits; AVR only, where frames are timed at the baud rate) and the
// byte each frame carries. The timescale is 1 ns.
func WriteVCD(w io.Writer, res *Result, pins []string) error {
	bw := bufio.NewWriter(w)
	type change struct {
		at  time.Duration
		id  string
		val string
		seq int
	}
	var changes []change
	add := func(at time.Duration, id, val string) {
		changes = append(changes, change{at, id, val, len(changes)})
	}
	ids := map[string]string{}
	next := 0
	id := func() string {
		// Identifiers are printable ASCII 33..126, more than one char when needed.
		n := next
		next++
		s := ""
		for {
			s += string(rune(33 + n%94))
			n /= 94
			if n == 0 {
				return s
			}
		}
	}
	fmt.Fprintf(bw, "$version kiln run (%s) $end\n$timescale 1ns $end\n$scope module %s $end\n", res.Engine, vcdName(res.Board))
	for _, p := range pins {
		ids[p] = id()
		fmt.Fprintf(bw, "$var wire 1 %s %s $end\n", ids[p], p)
	}
	lineID, byteID := id(), id()
	timed := len(res.Frames) > 0 && res.Frames[0].Bit > 0
	if timed || len(res.Frames) == 0 {
		fmt.Fprintf(bw, "$var wire 1 %s uart_tx $end\n", lineID)
	}
	fmt.Fprintf(bw, "$var wire 8 %s uart_tx_byte $end\n", byteID)
	fmt.Fprintf(bw, "$upscope $end\n$enddefinitions $end\n")

	// Initial values: pins as first reported (x if never), the line idle.
	initial := map[string]string{}
	for _, p := range pins {
		initial[p] = "x"
	}
	for _, pc := range res.Pins {
		if pc.At == 0 {
			initial[pc.Pin] = fmt.Sprint(pc.Level)
		}
	}
	for _, pc := range res.Pins {
		if pc.At > 0 && ids[pc.Pin] != "" {
			add(pc.At, ids[pc.Pin], fmt.Sprint(pc.Level))
		}
	}
	var lineFree time.Duration
	for _, f := range res.Frames {
		start := f.At
		if timed {
			if start < lineFree {
				start = lineFree
			}
			level := byte(1)
			set := func(at time.Duration, l byte) {
				if l != level {
					add(at, lineID, fmt.Sprint(l))
					level = l
				}
			}
			set(start, 0) // start bit
			for i := 0; i < 8 && i < f.Bits-2; i++ {
				set(start+time.Duration(i+1)*f.Bit, (f.Byte>>i)&1)
			}
			set(start+time.Duration(min(9, f.Bits-1))*f.Bit, 1) // stop bit
			lineFree = start + time.Duration(f.Bits)*f.Bit
		}
		add(start, byteID, fmt.Sprintf("b%08b", f.Byte))
	}
	sort.SliceStable(changes, func(i, j int) bool {
		if changes[i].at != changes[j].at {
			return changes[i].at < changes[j].at
		}
		return changes[i].seq < changes[j].seq
	})
	fmt.Fprintf(bw, "#0\n$dumpvars\n")
	for _, p := range pins {
		fmt.Fprintf(bw, "%s%s\n", initial[p], ids[p])
	}
	if timed || len(res.Frames) == 0 {
		fmt.Fprintf(bw, "1%s\n", lineID)
	}
	fmt.Fprintf(bw, "bx %s\n$end\n", byteID)
	last := time.Duration(-1)
	for _, c := range changes {
		if c.at != last {
			fmt.Fprintf(bw, "#%d\n", c.at.Nanoseconds())
			last = c.at
		}
		if len(c.val) > 1 {
			fmt.Fprintf(bw, "%s %s\n", c.val, c.id)
		} else {
			fmt.Fprintf(bw, "%s%s\n", c.val, c.id)
		}
	}
	if end := res.Simulated; end > last {
		fmt.Fprintf(bw, "#%d\n", end.Nanoseconds())
	}
	return bw.Flush()
}

// vcdName makes a scope name of letters, digits and underscores.
func vcdName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "board"
	}
	return string(b)
}

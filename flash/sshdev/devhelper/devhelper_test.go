package devhelper

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelperCommands(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "disk")
	data := make([]byte, 3<<20+4096)
	rand.New(rand.NewSource(1)).Read(data)
	os.WriteFile(dev, data, 0o600)

	var out bytes.Buffer
	if err := Main([]string{"sha256", dev, "4096", fmt.Sprint(len(data) - 8192)}, nil, &out); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data[4096 : len(data)-4096])
	if !strings.HasPrefix(out.String(), hex.EncodeToString(sum[:])+"  ") {
		t.Fatalf("sha256: %q", out.String())
	}

	out.Reset()
	if err := Main([]string{"blockhash", dev, "0", fmt.Sprint(len(data)), "65536"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out.String())
	if len(lines) != (len(data)+65535)/65536 {
		t.Fatalf("%d block hashes", len(lines))
	}
	for i, l := range lines {
		b := data[i*65536 : min(len(data), (i+1)*65536)]
		s := sha256.Sum256(b)
		if l != hex.EncodeToString(s[:]) {
			t.Fatalf("block %d hash differs", i)
		}
	}

	var in bytes.Buffer
	fmt.Fprintf(&in, "%d %d\n", 8192, 5)
	in.WriteString("hello")
	fmt.Fprintf(&in, "%d %d\n", 1<<20, 3)
	in.WriteString("abc")
	if err := Main([]string{"apply", dev}, &in, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dev)
	if string(got[8192:8197]) != "hello" || string(got[1<<20:1<<20+3]) != "abc" || !bytes.Equal(got[:8192], data[:8192]) {
		t.Fatal("apply wrote the wrong bytes")
	}
	if err := Main([]string{"apply", dev}, strings.NewReader("12 99\nshort"), nil); err == nil {
		t.Fatal("a truncated block was accepted")
	}
	if err := Main([]string{"blockhash", dev, "1", "10", "4096"}, nil, &out); err == nil {
		t.Fatal("an unaligned offset was accepted")
	}
}

func TestDelta(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewSource(2))
	old := make([]byte, 5<<20+1536) // a short last block
	rng.Read(old)
	next := bytes.Clone(old)
	var changed []int
	for i := 0; i < len(old)/bs+1; i++ {
		if i == 0 || i == len(old)/bs || rng.Intn(40) == 0 {
			changed = append(changed, i)
			next[i*bs] ^= 0xff
		}
	}
	sums := func(data []byte) []byte {
		var b bytes.Buffer
		for o := 0; o < len(data); o += bs {
			binary.Write(&b, binary.BigEndian, BlockSum(data[o:min(o+bs, len(data))]))
		}
		return b.Bytes()
	}
	stdin := func(want []byte, blocks []int, from []byte) *bytes.Buffer {
		b := bytes.NewBuffer(bytes.Clone(want))
		for _, i := range blocks {
			b.Write(from[i*bs : min((i+1)*bs, len(from))])
		}
		return b
	}
	dev := filepath.Join(t.TempDir(), "disk")
	os.WriteFile(dev, old, 0o600)
	n := fmt.Sprint(len(old))

	var out bytes.Buffer
	if err := Main([]string{"delta", dev, n, fmt.Sprint(bs)}, stdin(sums(next), changed, next), &out); err != nil {
		t.Fatal(err)
	}
	var report []string
	for _, i := range changed {
		report = append(report, fmt.Sprintf("d %d", i))
	}
	sum := sha256.Sum256(next)
	report = append(report, fmt.Sprintf("= %d %s", len(changed), hex.EncodeToString(sum[:])))
	var got, progress []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.HasPrefix(l, "p ") {
			progress = append(progress, l)
		} else {
			got = append(got, l)
		}
	}
	if strings.Join(progress, "|") != "" {
		t.Errorf("progress %q for a 5 MiB range (one line per 16 MiB)", progress)
	}
	if strings.Join(got, "|") != strings.Join(report, "|") {
		t.Fatalf("delta reported\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(report, "\n"))
	}
	if got, _ := os.ReadFile(dev); !bytes.Equal(got, next) {
		t.Fatal("the device does not hold the new content")
	}

	// Nothing to do: no block asked for, the same hash.
	out.Reset()
	if err := Main([]string{"delta", dev, n, fmt.Sprint(bs)}, stdin(sums(next), nil, nil), &out); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("= 0 %s\n", hex.EncodeToString(sum[:])); out.String() != want {
		t.Fatalf("unchanged device: %q, want %q", out.String(), want)
	}

	// A block whose bytes do not match the sum it was announced with is refused.
	os.WriteFile(dev, old, 0o600)
	bad := stdin(sums(next), changed, next)
	badBytes := bad.Bytes()
	badBytes[len(badBytes)-1] ^= 1
	if err := Main([]string{"delta", dev, n, fmt.Sprint(bs)}, bad, io.Discard); err == nil || !strings.Contains(err.Error(), "does not match its sum") {
		t.Fatalf("a corrupted block: %v", err)
	}
	// The host stops sending: an error, not a hash.
	out.Reset()
	if err := Main([]string{"delta", dev, n, fmt.Sprint(bs)}, stdin(sums(next), changed[:1], next), &out); err == nil || strings.Contains(out.String(), "=") {
		t.Fatalf("missing blocks: %v, output %q", err, out.String())
	}
	// A sum that matches by accident (here: the old block's sum announced for
	// new content) leaves the old block, and the hash says so.
	os.WriteFile(dev, old, 0o600)
	fooled := sums(next)
	copy(fooled[8*changed[0]:], sums(old)[8*changed[0]:8*changed[0]+8])
	out.Reset()
	if err := Main([]string{"delta", dev, n, fmt.Sprint(bs)}, stdin(fooled, changed[1:], next), &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), hex.EncodeToString(sum[:])) {
		t.Fatal("the hash claims the new content although one block was not written")
	}
	// Progress: a line per 16 MiB read.
	big := make([]byte, 33<<20)
	os.WriteFile(dev, big, 0o600)
	out.Reset()
	if err := Main([]string{"delta", dev, fmt.Sprint(len(big)), fmt.Sprint(bs)}, stdin(sums(big), nil, nil), &out); err != nil {
		t.Fatal(err)
	}
	zero := sha256.Sum256(big)
	if want := fmt.Sprintf("p %d\np %d\n= 0 %x\n", 16<<20, 32<<20, zero); out.String() != want {
		t.Errorf("33 MiB delta said %q, want %q", out.String(), want)
	}
	if err := Main([]string{"delta", dev, "1000", "4096"}, nil, io.Discard); err == nil {
		t.Fatal("a length that is not whole sectors was accepted")
	}
}

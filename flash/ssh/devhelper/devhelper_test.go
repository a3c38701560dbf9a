package devhelper

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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

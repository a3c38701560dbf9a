package cache

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/internal/trust"
)

// FuzzOpenRecord: any bytes as a record object give a record signed by the
// accepted key, or an error; never a panic.
func FuzzOpenRecord(f *testing.F) {
	sk := newKey(f)
	st := newStore(f)
	_, p := entry(f, st, "seed", 1)
	m, _ := store.ReadManifest(p)
	body, err := Seal(&Record{Key: m.Hash, Name: m.Name, Content: Content{SHA256: strings.Repeat("a", 64), Size: 10, Compression: Compression}, Files: m.Files}, sk)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(body)
	f.Add([]byte(`{"record":"{}","signature":""}`))
	keys := []*trust.PublicKey{sk.Public()}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, pk, err := OpenRecord(data, keys)
		if err == nil && (pk != keys[0] || r.check() != nil) {
			t.Fatalf("accepted %+v by %v", r, pk)
		}
	})
}

// FuzzUnpack: any content stream unpacks exactly the recorded files or
// fails with ErrContent; never a panic, never a file outside the entry.
func FuzzUnpack(f *testing.F) {
	st := newStore(f)
	_, p := entry(f, st, "seed", 2)
	m, _ := store.ReadManifest(p)
	var buf bytes.Buffer
	if err := pack(&buf, p, m.Files); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := unpack(bytes.NewReader(data), "", m.Files)
		if err != nil && !errors.Is(err, ErrContent) {
			t.Fatalf("error not ErrContent: %v", err)
		}
	})
}

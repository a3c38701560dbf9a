//go:build !race

// Decrypting a key minisign encrypted costs what minisign makes it cost:
// scrypt with 1 GiB of memory, about 20 s on a busy 2-core machine and
// several minutes under the race detector, so this test is left out of
// -race builds (make test); run it with go test ./internal/trust.

package trust

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestDecryptMinisignEncryptedKey reads testdata/minisign-encrypted.key,
// made by `minisign -G` with the password "hunter2" (minisign's default
// scrypt limits), signs with it, and Debian's minisign verifies the result
// with the matching public key.
func TestDecryptMinisignEncryptedKey(t *testing.T) {
	data, err := os.ReadFile("testdata/minisign-encrypted.key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSecretKey(data, nil); err == nil {
		t.Fatal("an encrypted key parsed without its password")
	}
	sk, err := ParseSecretKey(data, []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	pubData, _ := os.ReadFile("testdata/minisign-encrypted.pub")
	pk, err := ParsePublicKey(pubData)
	if err != nil {
		t.Fatal(err)
	}
	if !pk.Equal(sk.Public()) {
		t.Fatal("the decrypted key is not the public key's pair")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "fw.bin")
	writeFile(t, file, firmware())
	sig, _, err := SignArtifact(sk, bytes.NewReader(firmware()), "fw.bin", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, file+".minisig", sig.Encode())
	if out, err := exec.Command(minisignBin(t), "-V", "-p", "testdata/minisign-encrypted.pub", "-m", file).CombinedOutput(); err != nil {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}
}

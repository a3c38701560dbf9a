package trust

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// minisignBin returns Debian's minisign; the Makefile's deps target
// installs it, so its absence is a broken set-up, not a reason to skip.
func minisignBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("minisign")
	if err != nil {
		t.Fatalf("minisign is not installed (make deps installs it): %v", err)
	}
	return p
}

func run(t *testing.T, dir string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// firmware is some bytes that look like an artifact.
func firmware() []byte {
	b := make([]byte, 3000)
	for i := range b {
		b[i] = byte(i*7 + i/13)
	}
	return b
}

// TestMinisignVerifiesKiln: Debian's minisign -V accepts kiln's signature
// and rejects it after one changed byte of the file or of the trusted
// comment.
func TestMinisignVerifiesKiln(t *testing.T) {
	ms := minisignBin(t)
	dir := t.TempDir()
	sk, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	data := firmware()
	art := filepath.Join(dir, "firmware.hex")
	writeFile(t, art, data)
	sig, claims, err := SignArtifact(sk, bytes.NewReader(data), "firmware.hex", "0123abcd", time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if claims.SHA256 == "" || !strings.Contains(sig.TrustedComment, "sha256:"+claims.SHA256) || !strings.Contains(sig.TrustedComment, "derivation:0123abcd") {
		t.Fatalf("trusted comment %q lacks the hashes", sig.TrustedComment)
	}
	writeFile(t, art+".minisig", sig.Encode())
	pub := sk.Public().String()

	out, err := run(t, dir, ms, "-V", "-P", pub, "-m", art)
	if err != nil {
		t.Fatalf("minisign -V rejected kiln's signature: %v\n%s", err, out)
	}
	if !strings.Contains(out, "sha256:"+claims.SHA256) {
		t.Errorf("minisign did not show the trusted comment: %s", out)
	}
	// The public key file works too (-p).
	writeFile(t, filepath.Join(dir, "k.pub"), sk.Public().Encode())
	if out, err := run(t, dir, ms, "-V", "-p", "k.pub", "-m", art); err != nil {
		t.Fatalf("minisign -V -p: %v\n%s", err, out)
	}
	// -H: minisign insists on the prehashed form; kiln's is.
	if out, err := run(t, dir, ms, "-V", "-H", "-P", pub, "-m", art); err != nil {
		t.Fatalf("minisign -V -H: %v\n%s", err, out)
	}

	t.Run("changed byte", func(t *testing.T) {
		bad := append([]byte(nil), data...)
		bad[1234] ^= 0x01
		p := filepath.Join(dir, "changed.hex")
		writeFile(t, p, bad)
		writeFile(t, p+".minisig", sig.Encode())
		if out, err := run(t, dir, ms, "-V", "-P", pub, "-m", p); err == nil {
			t.Fatalf("minisign accepted a changed file:\n%s", out)
		}
	})
	t.Run("changed trusted comment", func(t *testing.T) {
		p := filepath.Join(dir, "comment.hex")
		writeFile(t, p, data)
		forged := *sig
		forged.TrustedComment = strings.Replace(sig.TrustedComment, "derivation:0123abcd", "derivation:0123abce", 1)
		writeFile(t, p+".minisig", forged.Encode())
		if out, err := run(t, dir, ms, "-V", "-P", pub, "-m", p); err == nil {
			t.Fatalf("minisign accepted a changed trusted comment:\n%s", out)
		}
	})
	t.Run("other key", func(t *testing.T) {
		other, _ := GenerateKey(nil)
		if out, err := run(t, dir, ms, "-V", "-P", other.Public().String(), "-m", art); err == nil {
			t.Fatalf("minisign accepted the signature under another key:\n%s", out)
		}
	})
}

// TestKilnVerifiesMinisign: kiln accepts signatures made by minisign -G/-S
// (prehashed and legacy) and rejects a changed byte or trusted comment.
func TestKilnVerifiesMinisign(t *testing.T) {
	ms := minisignBin(t)
	dir := t.TempDir()
	if out, err := run(t, dir, ms, "-G", "-W", "-p", "m.pub", "-s", "m.key"); err != nil {
		t.Fatalf("minisign -G: %v\n%s", err, out)
	}
	data := firmware()
	writeFile(t, filepath.Join(dir, "fw.bin"), data)
	pubData, _ := os.ReadFile(filepath.Join(dir, "m.pub"))
	pk, err := ParsePublicKey(pubData)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pubData), "minisign public key "+pk.ID.String()) {
		t.Errorf("key id %s is not the one minisign printed:\n%s", pk.ID, pubData)
	}
	for _, legacy := range []bool{false, true} {
		name := "prehashed"
		args := []string{"-S", "-W", "-s", "m.key", "-m", "fw.bin", "-t", "built by minisign\tsha256:x"}
		if legacy {
			name = "legacy"
			args = append(args, "-l")
		}
		t.Run(name, func(t *testing.T) {
			if out, err := run(t, dir, ms, args...); err != nil {
				t.Fatalf("minisign -S: %v\n%s", err, out)
			}
			raw, _ := os.ReadFile(filepath.Join(dir, "fw.bin.minisig"))
			sig, err := ParseSignature(raw)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{false: "ED", true: "Ed"}[legacy]; sig.Algorithm != want {
				t.Fatalf("algorithm %q, want %q", sig.Algorithm, want)
			}
			if err := Verify(pk, bytes.NewReader(data), sig); err != nil {
				t.Fatalf("kiln rejected minisign's signature: %v", err)
			}
			if !bytes.Equal(sig.Encode(), raw) {
				t.Errorf("re-encoding changed the signature file:\n%s\n%s", sig.Encode(), raw)
			}
			bad := append([]byte(nil), data...)
			bad[0] ^= 0x80
			if err := Verify(pk, bytes.NewReader(bad), sig); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("changed byte: got %v, want ErrBadSignature", err)
			}
			forged := *sig
			forged.TrustedComment += " (edited)"
			if err := Verify(pk, bytes.NewReader(data), &forged); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("changed trusted comment: got %v, want ErrBadSignature", err)
			}
			other, _ := GenerateKey(nil)
			if err := Verify(other.Public(), bytes.NewReader(data), sig); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("other key: got %v, want ErrWrongKey", err)
			}
		})
	}
}

// TestSecretKeyFilesInterop: minisign signs with a kiln secret key file, and
// kiln signs with a minisign (-W) secret key file; each side verifies.
func TestSecretKeyFilesInterop(t *testing.T) {
	ms := minisignBin(t)
	dir := t.TempDir()
	data := firmware()
	writeFile(t, filepath.Join(dir, "fw.bin"), data)

	sk, _ := GenerateKey(nil)
	writeFile(t, filepath.Join(dir, "kiln.key"), sk.Encode())
	if out, err := run(t, dir, ms, "-S", "-W", "-s", "kiln.key", "-m", "fw.bin", "-x", "a.minisig"); err != nil {
		t.Fatalf("minisign could not sign with kiln's secret key: %v\n%s", err, out)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "a.minisig"))
	sig, err := ParseSignature(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(sk.Public(), bytes.NewReader(data), sig); err != nil {
		t.Fatal(err)
	}
	// minisign -R recreates the same public key from kiln's secret key.
	if out, err := run(t, dir, ms, "-R", "-s", "kiln.key", "-p", "re.pub"); err != nil {
		t.Fatalf("minisign -R: %v\n%s", err, out)
	}
	re, _ := os.ReadFile(filepath.Join(dir, "re.pub"))
	if pk, err := ParsePublicKey(re); err != nil || !pk.Equal(sk.Public()) {
		t.Fatalf("minisign -R made %v (%v), want %s", pk, err, sk.Public())
	}

	if out, err := run(t, dir, ms, "-G", "-W", "-p", "m.pub", "-s", "m.key"); err != nil {
		t.Fatalf("minisign -G: %v\n%s", err, out)
	}
	keyData, _ := os.ReadFile(filepath.Join(dir, "m.key"))
	msk, err := ParseSecretKey(keyData, nil)
	if err != nil {
		t.Fatalf("kiln could not read minisign's secret key: %v", err)
	}
	s2, _, err := SignArtifact(msk, bytes.NewReader(data), "fw.bin", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "b.minisig"), s2.Encode())
	if out, err := run(t, dir, ms, "-V", "-p", "m.pub", "-m", "fw.bin", "-x", "b.minisig"); err != nil {
		t.Fatalf("minisign rejected a kiln signature made with its own key: %v\n%s", err, out)
	}
}

func TestEncryptedSecretKey(t *testing.T) {
	sk, _ := GenerateKey(nil)
	// Small scrypt limits keep the test fast; the format is the same.
	enc, err := sk.EncodeEncrypted(nil, []byte("correct horse"), 1<<16, 1<<22)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSecretKey(enc, nil); !errors.Is(err, ErrEncryptedKey) {
		t.Fatalf("no password: got %v, want ErrEncryptedKey", err)
	}
	if _, err := ParseSecretKey(enc, []byte("wrong")); !errors.Is(err, ErrPassword) {
		t.Fatalf("wrong password: got %v, want ErrPassword", err)
	}
	got, err := ParseSecretKey(enc, []byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != sk.ID || !got.Key.Equal(sk.Key) {
		t.Fatal("decrypted key differs")
	}
}

// minisign prints key IDs without leading zeros (%" PRIX64): so does kiln,
// so the public key file's comment is the same.
func TestKeyIDFormat(t *testing.T) {
	id := KeyID{0x5a, 0x99, 0x33, 0xc1, 0xe4, 0x46, 0x49, 0x0c}
	if got := id.String(); got != "C4946E4C133995A" {
		t.Fatalf("got %s", got)
	}
}

func TestScryptParams(t *testing.T) {
	// minisign's limits give libsodium's N=2^20, r=8, p=1 (1 GiB).
	n, r, p := scryptParams(DefaultOpsLimit, DefaultMemLimit)
	if n != 20 || r != 8 || p != 1 {
		t.Fatalf("got N=2^%d r=%d p=%d", n, r, p)
	}
}

func TestClaimsRoundTrip(t *testing.T) {
	c := Claims{Timestamp: 42, File: "a\tb.hex", SHA256: "ab12", Derivation: "cd34"}
	s := c.String()
	if s != "timestamp:42\tfile:a b.hex\thashed\tsha256:ab12\tderivation:cd34" {
		t.Fatalf("got %q", s)
	}
	got := ParseClaims(s)
	c.File = "a b.hex"
	if got != c {
		t.Fatalf("got %+v, want %+v", got, c)
	}
}

func TestVerifyArtifactChecksClaimedHash(t *testing.T) {
	sk, _ := GenerateKey(nil)
	data := firmware()
	// A signer that writes a false sha256 into the comment is caught.
	sig, err := Sign(sk, bytes.NewReader(data), Claims{Timestamp: 1, File: "x", SHA256: strings.Repeat("0", 64)}.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyArtifact([]*PublicKey{sk.Public()}, bytes.NewReader(data), sig); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("got %v, want ErrBadSignature", err)
	}
}

func FuzzParseSignature(f *testing.F) {
	sk, _ := GenerateKey(nil)
	sig, _, _ := SignArtifact(sk, bytes.NewReader([]byte("x")), "x", "", time.Unix(0, 0))
	f.Add(sig.Encode())
	f.Add(sk.Encode())
	f.Add(sk.Public().Encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := ParseSignature(data); err == nil {
			s2, err := ParseSignature(s.Encode())
			if err != nil || s2.TrustedComment != s.TrustedComment || !bytes.Equal(s2.Sig, s.Sig) {
				t.Fatalf("round trip: %v", err)
			}
		}
		_, _ = ParsePublicKey(data)
		_, _ = ParseSecretKey(data, nil)
	})
}

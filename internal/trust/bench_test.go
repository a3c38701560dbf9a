package trust

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSignVerifyVsMinisign signs and verifies the same 8 MiB artifact
// with kiln (in-process) and with Debian's minisign (one process per step,
// as a script would run it), and prints the ratio.
func BenchmarkSignVerifyVsMinisign(b *testing.B) {
	ms, err := exec.LookPath("minisign")
	if err != nil {
		b.Fatalf("minisign is not installed (make deps installs it): %v", err)
	}
	dir := b.TempDir()
	data := bytes.Repeat(firmware(), 8<<20/3000+1)[:8<<20]
	file := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		b.Fatal(err)
	}
	sk, _ := GenerateKey(nil)
	keyFile := filepath.Join(dir, "k.key")
	os.WriteFile(keyFile, sk.Encode(), 0o600)
	var kiln, peer time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		f, _ := os.Open(file)
		sig, _, err := SignArtifact(sk, f, "image.bin", "", time.Now())
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		f, _ = os.Open(file)
		_, err = VerifyArtifact([]*PublicKey{sk.Public()}, f, sig)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		kiln += time.Since(start)

		start = time.Now()
		if out, err := exec.Command(ms, "-S", "-W", "-s", keyFile, "-m", file, "-x", file+".ms").CombinedOutput(); err != nil {
			b.Fatalf("minisign -S: %v\n%s", err, out)
		}
		if out, err := exec.Command(ms, "-V", "-q", "-P", sk.Public().String(), "-m", file, "-x", file+".ms").CombinedOutput(); err != nil {
			b.Fatalf("minisign -V: %v\n%s", err, out)
		}
		peer += time.Since(start)
	}
	ratio := float64(peer) / float64(kiln)
	b.Logf("sign+verify 8 MiB: kiln %v, minisign %v (two processes): minisign/kiln = %.2f", kiln/time.Duration(b.N), peer/time.Duration(b.N), ratio)
	b.ReportMetric(ratio, "minisign/kiln")
}

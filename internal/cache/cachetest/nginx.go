package cachetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Mirror is nginx serving a bucket's objects read-only over HTTPS, as a CDN
// in front of the bucket would: GET and HEAD are passed to the gateway
// (anonymous reads), every other method is refused.
type Mirror struct {
	URL    string // https://IP:PORT/PREFIX
	CAFile string // the test CA, for SSL_CERT_FILE
	CA     *x509.CertPool
	ns     string
}

// StartMirror starts nginx in namespace ns ("" = this one) on ip, in front
// of w's bucket, serving the objects under prefix.
func StartMirror(t testing.TB, w *Weed, ns, ip, prefix string) *Mirror {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatalf("nginx is not installed (Debian nginx-light, in the Makefile's DEB_PACKAGES): %v", err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile, pool := testCA(t, dir, ip)
	port := freePorts(t, 1)[0]
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s:%[3]d ssl;
		ssl_certificate %[4]s;
		ssl_certificate_key %[5]s;
		location /%[8]s/ {
			limit_except GET { deny all; }
			proxy_http_version 1.1;
			proxy_buffering off;
			proxy_set_header Host %[6]s;
			proxy_set_header Authorization "";
			proxy_pass %[7]s/%[9]s/%[8]s/;
		}
	}
}
`, dir, ip, port, certFile, keyFile, fmt.Sprintf("%s:%d", w.IP, w.Port), w.Endpoint(), prefix, Bucket)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log")}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	out, _ := os.Create(filepath.Join(dir, "nginx.out"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		out.Close()
	})
	m := &Mirror{URL: fmt.Sprintf("https://%s:%d/%s", ip, port, prefix), CAFile: caFile, CA: pool, ns: ns}
	{
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := m.Client()
		err := retryFor(ctx, 30*time.Second, func() error {
			select {
			case <-done:
				data, _ := os.ReadFile(filepath.Join(dir, "nginx.out"))
				log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				return fmt.Errorf("nginx exited: %s %s", data, log)
			default:
			}
			resp, err := c.Get(m.URL + "/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// Client is an HTTP client that trusts the test CA, connecting from the
// mirror's namespace.
func (m *Mirror) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: m.CA}, DialContext: DialIn(m.ns)}}
}

// testCA writes a CA and a server certificate for ip (and 127.0.0.1).
func testCA(t testing.TB, dir, ip string) (caFile, certFile, keyFile string, pool *x509.CertPool) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip), net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return caFile, certFile, keyFile, pool
}

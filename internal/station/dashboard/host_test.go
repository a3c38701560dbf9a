package dashboard

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAddrDefaultsToLoopback(t *testing.T) {
	for in, want := range map[string]string{":8080": "127.0.0.1:8080", "8080": "127.0.0.1:8080",
		"0.0.0.0:8080": "0.0.0.0:8080", "[::1]:9": "[::1]:9", "10.0.0.5:80": "10.0.0.5:80"} {
		if got := Addr(in); got != want {
			t.Errorf("Addr(%q) = %q, want %q", in, got, want)
		}
	}
}

// A page on rebind.example that resolves to 127.0.0.1 reaches the
// dashboard with Host: rebind.example:PORT: refused.
func TestGuardHost(t *testing.T) {
	okH := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	check := func(bound, host string, want int) {
		t.Helper()
		a, err := net.ResolveTCPAddr("tcp", bound)
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("GET", "/status", nil)
		r.Host = host
		w := httptest.NewRecorder()
		GuardHost(a, okH).ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("bound %s, Host %q: %d, want %d", bound, host, w.Code, want)
		}
	}
	check("127.0.0.1:8080", "127.0.0.1:8080", 200)
	check("127.0.0.1:8080", "localhost:8080", 200)
	check("127.0.0.1:8080", "rebind.example:8080", 421)
	check("127.0.0.1:8080", "127.0.0.1:9999", 421)
	check("127.0.0.1:8080", "", 421)
	check("0.0.0.0:8080", "10.1.2.3:8080", 200)
	check("0.0.0.0:8080", "rebind.example:8080", 421)
	check("10.1.2.3:8080", "localhost:8080", 421)

	// Through a real server.
	srv := httptest.NewServer(nil)
	srv.Config.Handler = GuardHost(srv.Listener.Addr(), okH)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Host = "rebind.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("real server: %d", resp.StatusCode)
	}
}

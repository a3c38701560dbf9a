package dashboard

import (
	"net"
	"net/http"
	"os"
	"strings"
)

// Addr is where --http listens when given ADDR: a bare port (":8080",
// "8080") binds the loopback interface only; a dashboard reachable from
// the network takes an explicit host (0.0.0.0:8080).
func Addr(addr string) string {
	if !strings.Contains(addr, ":") {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// GuardHost refuses (421 Misdirected Request) a request whose Host header
// does not name the address the dashboard is bound to, which is what a
// DNS-rebinding page in the operator's browser sends (its own name,
// resolved to 127.0.0.1). Allowed: the bound address itself; on a loopback
// address also localhost; on an unspecified address (0.0.0.0, ::) any IP
// literal and the machine's host name. The port must be the bound port.
func GuardHost(bound net.Addr, h http.Handler) http.Handler {
	host, port, _ := net.SplitHostPort(bound.String())
	ip := net.ParseIP(host)
	hostname, _ := os.Hostname()
	ok := func(hdr string) bool {
		hh, hp, err := net.SplitHostPort(hdr)
		if err != nil {
			hh, hp = hdr, "80"
		}
		if hp != port {
			return false
		}
		hh = strings.TrimSuffix(strings.ToLower(hh), ".")
		hip := net.ParseIP(strings.Trim(hh, "[]"))
		switch {
		case hip != nil && ip != nil && hip.Equal(ip):
			return true
		case ip != nil && ip.IsLoopback() && hh == "localhost":
			return true
		case ip != nil && ip.IsUnspecified() && (hip != nil || (hostname != "" && hh == strings.ToLower(hostname))):
			return true
		}
		return false
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok(r.Host) {
			http.Error(w, "dashboard: Host "+r.Host+" is not this dashboard's address (DNS rebinding?)", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

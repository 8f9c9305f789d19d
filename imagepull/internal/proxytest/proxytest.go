// Package proxytest is a real HTTP forward proxy for tests: it tunnels
// CONNECT requests (https through the proxy) and forwards absolute-form
// requests (plain http through the proxy), optionally demands Basic
// proxy credentials, can map the hosts clients ask for onto real
// addresses (so a test registry can be reached under a name only the
// proxy knows), and records what it was asked for.
package proxytest

import (
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is a running forward proxy.
type Proxy struct {
	URL string // http://127.0.0.1:port
	// Hosts maps host:port as clients ask for it to the address dialled.
	Hosts map[string]string
	// User and Password, if User is set, are required in Proxy-Authorization.
	User, Password string

	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // "CONNECT host:port" or "GET http://…"
}

// New starts a proxy, closed when the test ends.
func New(t testing.TB, hosts map[string]string) *Proxy {
	p := &Proxy{Hosts: hosts}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	t.Cleanup(p.srv.Close)
	return p
}

// Seen returns the requests the proxy handled.
func (p *Proxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// target is the address to dial for hostport.
func (p *Proxy) target(hostport string) string {
	if a, ok := p.Hosts[hostport]; ok {
		return a
	}
	return hostport
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	if p.User != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.User+":"+p.Password))
		if r.Header.Get("Proxy-Authorization") != want {
			w.Header().Set("Proxy-Authenticate", `Basic realm="proxy"`)
			w.WriteHeader(http.StatusProxyAuthRequired)
			return
		}
	}
	if r.Method == http.MethodConnect {
		p.record("CONNECT " + r.Host)
		p.tunnel(w, r)
		return
	}
	if r.URL.Scheme != "http" || r.URL.Host == "" {
		http.Error(w, "not a proxy request", http.StatusBadRequest)
		return
	}
	p.record(r.Method + " " + r.URL.String())
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Header.Del("Proxy-Authorization")
	out.Header.Del("Proxy-Connection")
	out.URL.Host = p.target(r.URL.Host)
	out.Host = r.URL.Host
	resp, err := (&http.Transport{Proxy: nil, DisableCompression: true}).RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func (p *Proxy) record(s string) {
	p.mu.Lock()
	p.seen = append(p.seen, s)
	p.mu.Unlock()
}

func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request) {
	up, err := net.DialTimeout("tcp", p.target(r.Host), 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if n := buf.Reader.Buffered(); n > 0 {
			b, _ := buf.Reader.Peek(n)
			up.Write(b)
		}
		io.Copy(up, conn)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		io.Copy(conn, up)
		conn.Close()
	}()
	wg.Wait()
	up.Close()
}

// Count returns how many recorded requests start with prefix.
func (p *Proxy) Count(prefix string) int {
	n := 0
	for _, s := range p.Seen() {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

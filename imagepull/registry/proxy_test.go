package registry

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/internal/proxytest"
	"github.com/cova-project/cova/imagepull/oci"
)

func TestProxyConfig(t *testing.T) {
	const secret = "pw-Zq7xMARKER"
	tests := []struct {
		name    string
		in      ProxyConfig
		wantNil bool
		wantErr error
	}{
		{name: "unset", in: ProxyConfig{NoProxy: "a.io"}, wantNil: true},
		{name: "https only", in: ProxyConfig{HTTPSProxy: "http://proxy:3128"}},
		{name: "no scheme", in: ProxyConfig{HTTPProxy: "proxy.corp:8080"}},
		{name: "socks5 with credentials", in: ProxyConfig{HTTPSProxy: "socks5://u:" + secret + "@proxy:1080"}},
		{name: "https proxy with no_proxy", in: ProxyConfig{HTTPSProxy: "https://proxy", NoProxy: "10.0.0.0/8,.corp,reg:5000"}},
		{name: "ftp scheme", in: ProxyConfig{HTTPSProxy: "ftp://proxy"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "path", in: ProxyConfig{HTTPProxy: "http://u:" + secret + "@proxy/path"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "query", in: ProxyConfig{HTTPProxy: "http://proxy/?x=" + secret}, wantErr: errdefs.ErrInvalidArgument},
		{name: "no host", in: ProxyConfig{HTTPSProxy: "http://"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unparsable", in: ProxyConfig{HTTPSProxy: "http://u:" + secret + "@pro xy:%zz"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "newline in no_proxy", in: ProxyConfig{HTTPSProxy: "http://proxy", NoProxy: "a\nb"}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.in.Config()
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "image_pull_proxy.") {
					t.Fatalf("error leaks the password or names no field: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (c == nil) != tc.wantNil {
				t.Fatalf("config %+v", c)
			}
			if c != nil && (c.HTTPSProxy != tc.in.HTTPSProxy || c.HTTPProxy != tc.in.HTTPProxy || c.NoProxy != tc.in.NoProxy) {
				t.Fatalf("config %+v from %+v", c, tc.in)
			}
		})
	}
}

// TestProxyTransport sends registry traffic through a real forward proxy:
// https registries through CONNECT tunnels (TLS still verified end to end
// against the registry's certificate), plain-http registries as
// absolute-form requests, proxy credentials from the URL, and no_proxy
// hosts never through the proxy. The registry is known only by a name the
// proxy maps to it, so a request that skipped the proxy cannot succeed.
func TestProxyTransport(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	tlsReg := newFake(t, true)
	tlsReg.addManifest("v1", oci.MediaTypeOCIManifest, body)
	plainReg := newFake(t, false)
	plainReg.addManifest("v1", oci.MediaTypeOCIManifest, body)
	_, tlsPort, _ := net.SplitHostPort(tlsReg.host())
	_, plainPort, _ := net.SplitHostPort(plainReg.host())
	tlsName := "example.com:" + tlsPort // in the test certificate
	plainName := "registry.invalid:" + plainPort
	proxy := proxytest.New(t, map[string]string{tlsName: tlsReg.host(), plainName: plainReg.host()})
	proxy.User, proxy.Password = "proxyuser", "proxy-pw"
	withCreds := strings.Replace(proxy.URL, "http://", "http://proxyuser:proxy-pw@", 1)

	tests := []struct {
		name  string
		pc    ProxyConfig
		ref   string
		roots bool
		want  string // request prefix the proxy must have seen; "" none
		fail  bool
	}{
		{name: "https through CONNECT", pc: ProxyConfig{HTTPSProxy: withCreds}, ref: tlsName + "/test/x:v1", roots: true, want: "CONNECT " + tlsName},
		{name: "TLS still verified through the tunnel", pc: ProxyConfig{HTTPSProxy: withCreds}, ref: tlsName + "/test/x:v1", want: "CONNECT " + tlsName, fail: true},
		{name: "plain http forwarded", pc: ProxyConfig{HTTPProxy: withCreds}, ref: plainName + "/test/x:v1", want: "GET http://" + plainName + "/v2/test/x/manifests/v1"},
		{name: "wrong proxy credentials", pc: ProxyConfig{HTTPSProxy: proxy.URL}, ref: tlsName + "/test/x:v1", roots: true, fail: true},
		{name: "no_proxy bypasses", pc: ProxyConfig{HTTPProxy: withCreds, NoProxy: ".invalid"}, ref: plainName + "/test/x:v1", fail: true},
		{name: "https_proxy does not carry http", pc: ProxyConfig{HTTPSProxy: withCreds}, ref: plainName + "/test/x:v1", fail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(proxy.Seen())
			pcfg, err := tc.pc.Config()
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Proxy: pcfg, Registries: insecure(plainName), Retries: 1}
			if tc.roots {
				cfg.ExtraRootCAs = [][]byte{tlsReg.certPEM()}
			}
			c, _ := testClient(t, cfg)
			_, _, err = c.Resolve(context.Background(), mustRef(t, tc.ref))
			seen := proxy.Seen()[before:]
			if !tc.fail && err != nil {
				t.Fatalf("resolve: %v (proxy saw %q)", err, seen)
			}
			if tc.fail && err == nil {
				t.Fatalf("resolve succeeded (proxy saw %q)", seen)
			}
			if strings.Contains(errString(err), "proxy-pw") {
				t.Fatalf("error shows the proxy password: %v", err)
			}
			hit := false
			for _, s := range seen {
				hit = hit || strings.HasPrefix(s, tc.want)
			}
			if tc.want != "" && !hit {
				t.Fatalf("proxy saw %q, want %q", seen, tc.want)
			}
			if tc.want == "" && len(seen) > 0 {
				t.Fatalf("proxy used: %q", seen)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

package registry

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/net/http/httpproxy"
)

// ProxyConfig is cdh.toml's [image.image_pull_proxy] table (also what the
// agent.https_proxy, agent.http_proxy and agent.no_proxy kernel parameters
// give): HTTPSProxy carries https registry traffic (CONNECT), HTTPProxy
// plain-http registries, NoProxy lists hosts, domains (".example.com" or
// "example.com" with subdomains), IPs, CIDRs and host:port reached
// directly ("*" for all). Loopback addresses and "localhost" are always
// reached directly. The process environment is never consulted.
type ProxyConfig struct {
	HTTPSProxy string `toml:"https_proxy" json:"https_proxy"`
	HTTPProxy  string `toml:"http_proxy" json:"http_proxy"`
	NoProxy    string `toml:"no_proxy" json:"no_proxy"`
}

// Config validates p and returns what Config.Proxy takes; nil when no
// proxy is set. Proxy URLs are http://, https:// or socks5://
// host[:port] (a missing scheme means http), optionally with user:password
// that errors never show.
func (p ProxyConfig) Config() (*httpproxy.Config, error) {
	if p.HTTPSProxy == "" && p.HTTPProxy == "" {
		return nil, nil
	}
	for _, f := range []struct{ name, v string }{{"https_proxy", p.HTTPSProxy}, {"http_proxy", p.HTTPProxy}} {
		if f.v == "" {
			continue
		}
		if err := validProxyURL(f.v); err != nil {
			return nil, fmt.Errorf("image_pull_proxy.%s: %w", f.name, err)
		}
	}
	if strings.ContainsAny(p.NoProxy, "\x00\r\n") {
		return nil, fmt.Errorf("image_pull_proxy.no_proxy: control characters: %w", errdefs.ErrInvalidArgument)
	}
	return &httpproxy.Config{HTTPSProxy: p.HTTPSProxy, HTTPProxy: p.HTTPProxy, NoProxy: p.NoProxy}, nil
}

func validProxyURL(s string) error {
	raw := s
	if !strings.Contains(s, "://") {
		raw = "http://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url errors quote the input, which may hold a password.
		return fmt.Errorf("not a URL: %w", errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return fmt.Errorf("scheme %q: want http, https or socks5: %w", clipS(u.Scheme), errdefs.ErrInvalidArgument)
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%s: want scheme://host[:port]: %w", redactProxy(u), errdefs.ErrInvalidArgument)
	}
	return nil
}

// redactProxy shows a proxy URL without its password.
func redactProxy(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	c.RawQuery, c.Fragment = "", ""
	return c.String()
}

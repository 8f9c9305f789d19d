package imagepull

import (
	"context"
	"net"
	"testing"

	"github.com/cova-project/cova/imagepull/internal/proxytest"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/test/regtest"
)

// TestPullThroughForwardProxy pulls from the real registry through a
// forward proxy configured as cdh.toml's [image.image_pull_proxy] (not the
// environment): the registry is known only by a name the proxy maps to
// it, so every request, blobs included, must have gone through the proxy.
func TestPullThroughForwardProxy(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	l1, l2 := tarLayer(t, file("a", "one")), tarLayer(t, file("b", "two"))
	if _, err := regtest.PushImage(ctx, reg.Host, "test/proxied", "v1", []regtest.Layer{l1, l2}); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(reg.Host)
	name := "registry.invalid:" + port
	proxy := proxytest.New(t, map[string]string{name: reg.Host})
	pc, err := registry.ProxyConfig{HTTPProxy: proxy.URL, HTTPSProxy: proxy.URL}.Config()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:1") // must be ignored
	p := newPuller(t, name, func(c *Config) { c.Registry.Proxy = pc })
	img, err := p.Pull(ctx, name+"/test/proxied:v1", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Stats.LayersFetched != 2 {
		t.Fatalf("stats %+v", img.Stats)
	}
	for _, l := range []regtest.Layer{l1, l2} {
		if n := proxy.Count("GET http://" + name + "/v2/test/proxied/blobs/" + oci.FromBytes(l.Blob).String()); n != 1 {
			t.Fatalf("proxy forwarded layer %s %d times: %q", oci.FromBytes(l.Blob), n, proxy.Seen())
		}
	}
}

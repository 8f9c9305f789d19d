package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in   string
		want Addr
		str  string // String() if different from in
	}{
		{in: "vsock://-1:1024", want: Addr{Scheme: SchemeVsock, CID: CIDAny, Port: 1024}},
		{in: "vsock://4294967295:4", want: Addr{Scheme: SchemeVsock, CID: CIDAny, Port: 4}, str: "vsock://-1:4"},
		{in: "vsock://3:2048", want: Addr{Scheme: SchemeVsock, CID: 3, Port: 2048}},
		{in: "vsock://0:1", want: Addr{Scheme: SchemeVsock, CID: 0, Port: 1}},
		{in: "vsock://2:4294967294", want: Addr{Scheme: SchemeVsock, CID: 2, Port: 4294967294}},
		{in: "unix:///run/cova/agent.sock", want: Addr{Scheme: SchemeUnix, Path: "/run/cova/agent.sock"}},
		{in: "unix://@cova-agent", want: Addr{Scheme: SchemeUnix, Path: "@cova-agent"}},
		{in: "vport:agent.0", want: Addr{Scheme: SchemeVport, Path: "agent.0"}},
		{in: "vport:/dev/vport1p2", want: Addr{Scheme: SchemeVport, Path: "/dev/vport1p2"}},
		{in: "vport:///dev/vport0p1", want: Addr{Scheme: SchemeVport, Path: "/dev/vport0p1"}, str: "vport:/dev/vport0p1"},
		{in: "tcp:127.0.0.1:1024", want: Addr{Scheme: SchemeTCP, Host: "127.0.0.1", Port: 1024}},
		{in: "tcp://0.0.0.0:8080", want: Addr{Scheme: SchemeTCP, Host: "0.0.0.0", Port: 8080}, str: "tcp:0.0.0.0:8080"},
		{in: "tcp::1024", want: Addr{Scheme: SchemeTCP, Port: 1024}},
		{in: "tcp:[::1]:65535", want: Addr{Scheme: SchemeTCP, Host: "::1", Port: 65535}},
		{in: "tcp:localhost:1", want: Addr{Scheme: SchemeTCP, Host: "localhost", Port: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseAddr(tc.in)
			if err != nil {
				t.Fatalf("ParseAddr: %v", err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			str := tc.str
			if str == "" {
				str = tc.in
			}
			if got.String() != str {
				t.Errorf("String() = %q, want %q", got.String(), str)
			}
			again, err := ParseAddr(got.String())
			if err != nil || again != got {
				t.Errorf("round trip: %+v, %v", again, err)
			}
		})
	}
}

func TestParseAddrBad(t *testing.T) {
	for _, in := range []string{
		"",
		"vsock://",
		"vsock://-1",
		"vsock://-1:",
		"vsock://:1024",
		"vsock://-2:1024",
		"vsock://4294967296:1024",
		"vsock://1:0",
		"vsock://1:4294967295",
		"vsock://1:+5",
		"vsock://+1:5",
		"vsock://1:2:3",
		"vsock://x:1024",
		"vsock:// -1:1024",
		"Vsock://-1:1024",
		"VSOCK://-1:1024",
		"unix://",
		"unix://relative/path",
		"unix:///",
		"unix:///run/../etc/x",
		"unix:///run//x",
		"unix://@",
		"unix:///run/\x00x",
		"unix:///" + strings.Repeat("a", 200),
		"vport:",
		"vport:bad name",
		"vport:/dev/vda",
		"vport:/dev/vport1",
		"vport:../x",
		"tcp:",
		"tcp:1024",
		"tcp:host:0",
		"tcp:host:65536",
		"tcp:host:http",
		"tcp:a b:1",
		"tcp:user@host:1",
		"hvsock:///run/x:1024",
		"mock:/tmp/x",
		"http://localhost:1024",
		"/run/agent.sock",
	} {
		t.Run(in, func(t *testing.T) {
			a, err := ParseAddr(in)
			if err == nil {
				t.Fatalf("ParseAddr(%q) = %+v, want error", in, a)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string // "" = valid
	}{
		{"default", func(*Config) {}, ""},
		{"unix server", func(c *Config) { c.ServerAddr = "unix:///run/a.sock" }, ""},
		{"tcp server rejected", func(c *Config) { c.ServerAddr = "tcp:127.0.0.1:1" }, "server_addr"},
		{"bad server", func(c *Config) { c.ServerAddr = "vsock://a:b" }, "server_addr"},
		{"empty server", func(c *Config) { c.ServerAddr = "" }, "server_addr"},
		{"test transport tcp", func(c *Config) { c.TestTransport = "tcp:127.0.0.1:1" }, ""},
		{"test transport vsock rejected", func(c *Config) { c.TestTransport = "vsock://-1:1" }, "test_transport"},
		{"test transport bad", func(c *Config) { c.TestTransport = "vport:" }, "test_transport"},
		{"zero hotplug", func(c *Config) { c.HotplugTimeout = 0 }, "hotplug_timeout"},
		{"negative cdh", func(c *Config) { c.CdhAPITimeout = -time.Second }, "cdh_api_timeout"},
		{"zero image pull", func(c *Config) { c.ImagePullTimeout = 0 }, "image_pull_timeout"},
		{"zero cdi", func(c *Config) { c.CdiTimeout = 0 }, "cdi_timeout"},
		{"zero launch", func(c *Config) { c.LaunchProcessTimeout = 0 }, "launch_process_timeout"},
		{"sub-second timeout ok", func(c *Config) { c.HotplugTimeout = time.Millisecond }, ""},
		{"bad log name", func(c *Config) { c.LogLevelName = "loud" }, "log_level"},
		{"log name mismatch", func(c *Config) { c.LogLevelName = "debug" }, "log_level"},
		{"negative pipe", func(c *Config) { c.ContainerPipeSize = -1 }, "container_pipe_size"},
		{"bad procs", func(c *Config) { c.GuestComponentsProcs = "all" }, "guest_components_procs"},
		{"empty procs", func(c *Config) { c.GuestComponentsProcs = "" }, "guest_components_procs"},
		{"bad rest api", func(c *Config) { c.GuestComponentsRestAPI = "none" }, "guest_components_rest_api"},
		{"proxy ok", func(c *Config) { c.HTTPSProxy = "https://u:p@proxy:443" }, ""},
		{"proxy socks5h ok", func(c *Config) { c.HTTPSProxy = "socks5h://proxy:1080" }, ""},
		{"proxy bad scheme", func(c *Config) { c.HTTPSProxy = "ftp://u:topsecret@proxy" }, "https_proxy"},
		{"bad cgroup_no_v1", func(c *Config) { c.CgroupNoV1 = "memory" }, "cgroup_no_v1"},
		{"relative policy", func(c *Config) { c.PolicyFile = "p.rego" }, "policy_file"},
		{"empty policy", func(c *Config) { c.PolicyFile = "" }, "policy_file"},
		{"modules ok", func(c *Config) { c.KernelModules = []string{"vsock", "/lib/m/x.ko.zst", "nf-conntrack"} }, ""},
		{"module traversal", func(c *Config) { c.KernelModules = []string{"/lib/../x.ko"} }, "kernel_modules[0]"},
		{"module bare suffix", func(c *Config) { c.KernelModules = []string{"ok", "/.ko"} }, "kernel_modules[1]"},
		{"module empty", func(c *Config) { c.KernelModules = []string{""} }, "kernel_modules[0]"},
		{"module long name", func(c *Config) { c.KernelModules = []string{strings.Repeat("m", 56)} }, "kernel_modules[0]"},
		{"mem agent settings without enable", func(c *Config) { c.MemAgent.CompactOrder = ptr[uint8](1) }, "mem_agent"},
		{"mem agent pct", func(c *Config) { c.MemAgent = MemAgent{Enable: true, CompactPSIPercentLimit: ptr[uint8](101)} }, "mem_agent_compact_psi_percent_limit"},
		{"mem agent swappiness", func(c *Config) { c.MemAgent = MemAgent{Enable: true, MemcgSwappinessMax: ptr[uint8](201)} }, "mem_agent_memcg_swappiness_max"},
		{"mem agent ok", func(c *Config) {
			c.MemAgent = MemAgent{Enable: true, MemcgSwappinessMax: ptr[uint8](200), MemcgPeriodPSIPercentLimit: ptr[uint8](100)}
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want error naming %s", tc.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Errorf("error leaks proxy password: %v", err)
			}
		})
	}
}

func TestValidateJoinsErrors(t *testing.T) {
	c := Default()
	c.HotplugTimeout = 0
	c.ServerAddr = "nope"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "hotplug_timeout") || !strings.Contains(err.Error(), "server_addr") {
		t.Errorf("err = %v, want both problems", err)
	}
}

func TestGuestComponentsProcsIncludes(t *testing.T) {
	all := []GuestComponentsProcs{ProcsAttestationAgent, ProcsConfidentialDataHub, ProcsAPIServerRest}
	tests := []struct {
		p    GuestComponentsProcs
		want []bool // for each of all
	}{
		{ProcsNone, []bool{false, false, false}},
		{ProcsAttestationAgent, []bool{true, false, false}},
		{ProcsConfidentialDataHub, []bool{true, true, false}},
		{ProcsAPIServerRest, []bool{true, true, true}},
		{"bogus", []bool{false, false, false}},
	}
	for _, tc := range tests {
		t.Run(string(tc.p), func(t *testing.T) {
			for i, c := range all {
				if got := tc.p.Includes(c); got != tc.want[i] {
					t.Errorf("%s.Includes(%s) = %v, want %v", tc.p, c, got, tc.want[i])
				}
			}
			if tc.p.Includes(ProcsNone) || tc.p.Includes("bogus") {
				t.Errorf("%s includes none/bogus", tc.p)
			}
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	for _, bad := range []string{"", "foo", "debugging", "xdebug", "inf"} {
		if _, err := ParseLogLevel(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseLogLevel(%q) err = %v", bad, err)
		}
	}
	if LevelTrace >= -4 || LevelCritical <= 8 {
		t.Errorf("LevelTrace=%d LevelCritical=%d", LevelTrace, LevelCritical)
	}
}

func TestRedactUserinfo(t *testing.T) {
	tests := map[string]string{
		"http://u:p@h:1/x@y":    "http://REDACTED@h:1/x@y",
		"u:p@h:1":               "REDACTED@h:1",
		"http://h:1/":           "http://h:1/",
		"socks5://a@b@c:1":      "socks5://REDACTED@c:1",
		"http://h/path?q=a@b":   "http://h/path?q=a@b",
		"no url at all":         "no url at all",
		"http://user:pass@host": "http://REDACTED@host",
		// Found by FuzzParseFile: no "://", the password leaked.
		"//user:s3cretpw@proxy:3128":  "REDACTED@proxy:3128",
		"http:/user:s3cretpw@proxy:1": "REDACTED@proxy:1",
		"//:0000@":                    "REDACTED@",
	}
	for in, want := range tests {
		t.Run(in, func(t *testing.T) {
			if got := redactUserinfo(in); got != want {
				t.Errorf("redactUserinfo(%q) = %q, want %q", in, got, want)
			}
		})
	}
}

package config

import (
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func ptr[T any](v T) *T { return &v }

func TestDefault(t *testing.T) {
	c := Default()
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"DebugConsole", c.DebugConsole, false},
		{"DebugConsoleVport", c.DebugConsoleVport, uint32(0)},
		{"DevMode", c.DevMode, false},
		{"LogLevel", c.LogLevel, slog.LevelInfo},
		{"LogLevelName", c.LogLevelName, "info"},
		{"LogVport", c.LogVport, uint32(0)},
		{"Trace", c.Trace, false},
		{"ServerAddr", c.ServerAddr, "vsock://-1:1024"},
		{"PassfdListenerPort", c.PassfdListenerPort, uint32(0)},
		{"HotplugTimeout", c.HotplugTimeout, 3 * time.Second},
		{"CdhAPITimeout", c.CdhAPITimeout, 50 * time.Second},
		{"ImagePullTimeout", c.ImagePullTimeout, 1200 * time.Second},
		{"CdiTimeout", c.CdiTimeout, 100 * time.Second},
		{"LaunchProcessTimeout", c.LaunchProcessTimeout, 6 * time.Second},
		{"VisibleCDIDevices", c.VisibleCDIDevices, false},
		{"ContainerPipeSize", c.ContainerPipeSize, 0},
		{"HTTPSProxy", c.HTTPSProxy, ""},
		{"NoProxy", c.NoProxy, ""},
		{"GuestComponentsProcs", c.GuestComponentsProcs, ProcsAPIServerRest},
		{"GuestComponentsRestAPI", c.GuestComponentsRestAPI, RestAPIResource},
		{"SecureStorageIntegrity", c.SecureStorageIntegrity, true},
		{"UnifiedCgroupHierarchy", c.UnifiedCgroupHierarchy, false},
		{"CgroupNoV1", c.CgroupNoV1, ""},
		{"CgroupV2", c.CgroupV2(), false},
		{"PolicyFile", c.PolicyFile, "/etc/kata-opa/default-policy.rego"},
		{"MemAgent", c.MemAgent, MemAgent{}},
		{"KernelModules", c.KernelModules, []string(nil)},
		{"TestTransport", c.TestTransport, ""},
		{"ConfigFile", c.ConfigFile, ""},
	}
	for _, tc := range checks {
		t.Run(tc.name, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("got %#v, want %#v", tc.got, tc.want)
			}
		})
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name      string
		cmdline   string
		want      func(c *Config) // applied to Default()
		wantWarns []string        // warning keys, in order
	}{
		{name: "empty", cmdline: "", want: func(*Config) {}},
		{name: "non-agent keys ignored", cmdline: "console=ttyS0 quiet panic=1 root=/dev/vda1 agentx.log=debug\n", want: func(*Config) {}},
		{name: "kata-style full line", cmdline: "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 agent.log=debug agent.debug_console agent.debug_console_vport=1026 agent.server_addr=vsock://-1:1024 systemd.unified_cgroup_hierarchy=1 agent.trace\n",
			want: func(c *Config) {
				c.LogLevel, c.LogLevelName = slog.LevelDebug, "debug"
				c.DebugConsole = true
				c.DebugConsoleVport = 1026
				c.UnifiedCgroupHierarchy = true
				c.Trace = true
			}},

		// Flags.
		{name: "debug_console flag", cmdline: "agent.debug_console", want: func(c *Config) { c.DebugConsole = true }},
		{name: "debug_console=false", cmdline: "agent.debug_console agent.debug_console=false", want: func(*Config) {}},
		{name: "devmode flag", cmdline: "agent.devmode", want: func(c *Config) { c.DevMode = true }},
		{name: "devmode=1", cmdline: "agent.devmode=1", want: func(c *Config) { c.DevMode = true }},
		{name: "bare trace", cmdline: "agent.trace", want: func(c *Config) { c.Trace = true }},
		{name: "trace=true", cmdline: "agent.trace=true", want: func(c *Config) { c.Trace = true }},
		{name: "trace=0", cmdline: "agent.trace agent.trace=0", want: func(*Config) {}},
		{name: "trace=42 nonzero", cmdline: "agent.trace=42", want: func(c *Config) { c.Trace = true }},
		{name: "trace=yes extension", cmdline: "agent.trace=yes", want: func(c *Config) { c.Trace = true }},
		{name: "trace=OFF extension", cmdline: "agent.trace=1 agent.trace=OFF", want: func(*Config) {}},

		// Log levels.
		{name: "log trace", cmdline: "agent.log=trace", want: func(c *Config) { c.LogLevel, c.LogLevelName = LevelTrace, "trace" }},
		{name: "log debug", cmdline: "agent.log=debug", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelDebug, "debug" }},
		{name: "log info", cmdline: "agent.log=info", want: func(*Config) {}},
		{name: "log warn", cmdline: "agent.log=warn", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelWarn, "warn" }},
		{name: "log warning", cmdline: "agent.log=warning", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelWarn, "warning" }},
		{name: "log error", cmdline: "agent.log=error", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelError, "error" }},
		{name: "log critical", cmdline: "agent.log=critical", want: func(c *Config) { c.LogLevel, c.LogLevelName = LevelCritical, "critical" }},
		{name: "log fatal", cmdline: "agent.log=fatal", want: func(c *Config) { c.LogLevel, c.LogLevelName = LevelCritical, "fatal" }},
		{name: "log panic", cmdline: "agent.log=panic", want: func(c *Config) { c.LogLevel, c.LogLevelName = LevelCritical, "panic" }},
		{name: "log DEBUG case", cmdline: "agent.log=DEBUG", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelDebug, "DEBUG" }},
		{name: "log last wins", cmdline: "agent.log=debug agent.log=error", want: func(c *Config) { c.LogLevel, c.LogLevelName = slog.LevelError, "error" }},

		// Ports.
		{name: "log_vport", cmdline: "agent.log_vport=1025", want: func(c *Config) { c.LogVport = 1025 }},
		{name: "passfd_listener_port", cmdline: "agent.passfd_listener_port=1027", want: func(c *Config) { c.PassfdListenerPort = 1027 }},
		{name: "debug_console_vport 0 ignored", cmdline: "agent.debug_console_vport=0", want: func(*Config) {}, wantWarns: []string{"agent.debug_console_vport"}},
		{name: "log_vport negative ignored", cmdline: "agent.log_vport=7 agent.log_vport=-5", want: func(c *Config) { c.LogVport = 7 }, wantWarns: []string{"agent.log_vport"}},

		// Server address.
		{name: "server_addr vsock", cmdline: "agent.server_addr=vsock://3:2048", want: func(c *Config) { c.ServerAddr = "vsock://3:2048" }},
		{name: "server_addr unix", cmdline: "agent.server_addr=unix:///run/agent.sock", want: func(c *Config) { c.ServerAddr = "unix:///run/agent.sock" }},

		// Timeouts.
		{name: "hotplug_timeout", cmdline: "agent.hotplug_timeout=10", want: func(c *Config) { c.HotplugTimeout = 10 * time.Second }},
		{name: "hotplug_timeout 0 ignored", cmdline: "agent.hotplug_timeout=0", want: func(*Config) {}, wantWarns: []string{"agent.hotplug_timeout"}},
		{name: "cdh_api_timeout", cmdline: "agent.cdh_api_timeout=600", want: func(c *Config) { c.CdhAPITimeout = 600 * time.Second }},
		{name: "image_pull_timeout", cmdline: "agent.image_pull_timeout=1800", want: func(c *Config) { c.ImagePullTimeout = 1800 * time.Second }},
		{name: "cdi_timeout", cmdline: "agent.cdi_timeout=320", want: func(c *Config) { c.CdiTimeout = 320 * time.Second }},
		{name: "launch_process_timeout", cmdline: "agent.launch_process_timeout=60", want: func(c *Config) { c.LaunchProcessTimeout = time.Minute }},
		{name: "timeout Go duration extension", cmdline: "agent.hotplug_timeout=1m30s", want: func(c *Config) { c.HotplugTimeout = 90 * time.Second }},
		{name: "timeout plus sign", cmdline: "agent.cdi_timeout=+5", want: func(c *Config) { c.CdiTimeout = 5 * time.Second }},

		// Other keys.
		{name: "visible_cdi_devices", cmdline: "agent.visible_cdi_devices=true", want: func(c *Config) { c.VisibleCDIDevices = true }},
		{name: "container_pipe_size", cmdline: "agent.container_pipe_size=2097152", want: func(c *Config) { c.ContainerPipeSize = 2097152 }},
		{name: "container_pipe_size 0", cmdline: "agent.container_pipe_size=0", want: func(*Config) {}},
		{name: "https_proxy", cmdline: "agent.https_proxy=http://proxy.example:3128", want: func(c *Config) { c.HTTPSProxy = "http://proxy.example:3128" }},
		{name: "https_proxy with userinfo", cmdline: "agent.https_proxy=http://u:p@proxy:3128/", want: func(c *Config) { c.HTTPSProxy = "http://u:p@proxy:3128/" }},
		{name: "no_proxy", cmdline: "agent.no_proxy=localhost,127.0.0.1,.svc", want: func(c *Config) { c.NoProxy = "localhost,127.0.0.1,.svc" }},
		{name: "no_proxy with equals kept", cmdline: "agent.no_proxy=a=b", want: func(c *Config) { c.NoProxy = "a=b" }},
		{name: "procs none", cmdline: "agent.guest_components_procs=none", want: func(c *Config) { c.GuestComponentsProcs = ProcsNone }},
		{name: "procs aa", cmdline: "agent.guest_components_procs=attestation-agent", want: func(c *Config) { c.GuestComponentsProcs = ProcsAttestationAgent }},
		{name: "procs cdh", cmdline: "agent.guest_components_procs=confidential-data-hub", want: func(c *Config) { c.GuestComponentsProcs = ProcsConfidentialDataHub }},
		{name: "procs asr", cmdline: "agent.guest_components_procs=api-server-rest", want: func(*Config) {}},
		{name: "rest api all", cmdline: "agent.guest_components_rest_api=all", want: func(c *Config) { c.GuestComponentsRestAPI = RestAPIAll }},
		{name: "rest api attestation", cmdline: "agent.guest_components_rest_api=attestation", want: func(c *Config) { c.GuestComponentsRestAPI = RestAPIAttestation }},
		{name: "secure_storage_integrity=false", cmdline: "agent.secure_storage_integrity=false", want: func(c *Config) { c.SecureStorageIntegrity = false }},
		{name: "unified cgroup true", cmdline: "systemd.unified_cgroup_hierarchy=true", want: func(c *Config) { c.UnifiedCgroupHierarchy = true }},
		{name: "unified cgroup yes", cmdline: "systemd.unified_cgroup_hierarchy=yes", want: func(c *Config) { c.UnifiedCgroupHierarchy = true }},
		{name: "unified cgroup bare", cmdline: "systemd.unified_cgroup_hierarchy", want: func(c *Config) { c.UnifiedCgroupHierarchy = true }},
		{name: "unified cgroup 0", cmdline: "systemd.unified_cgroup_hierarchy=0", want: func(*Config) {}},
		{name: "cgroup_no_v1=all", cmdline: "cgroup_no_v1=all", want: func(c *Config) { c.CgroupNoV1 = "all" }},
		{name: "cgroup_no_v1 list ignored", cmdline: "cgroup_no_v1=memory,cpu", want: func(*Config) {}},
		{name: "kernel_modules", cmdline: "agent.kernel_modules=virtio_console,vsock,/lib/modules/6.1/kernel/net/x.ko.xz,",
			want: func(c *Config) {
				c.KernelModules = []string{"virtio_console", "vsock", "/lib/modules/6.1/kernel/net/x.ko.xz"}
			}},
		{name: "test_transport vport name", cmdline: "agent.test_transport=vport:agent.0", want: func(c *Config) { c.TestTransport = "vport:agent.0" }},
		{name: "test_transport vport dev", cmdline: "agent.test_transport=vport:/dev/vport1p1", want: func(c *Config) { c.TestTransport = "vport:/dev/vport1p1" }},
		{name: "test_transport tcp", cmdline: "agent.test_transport=tcp::1024", want: func(c *Config) { c.TestTransport = "tcp::1024" }},

		// Quotes.
		{name: "quoted value", cmdline: `agent.no_proxy="a b" agent.devmode`, want: func(c *Config) { c.NoProxy = "a b"; c.DevMode = true }},
		{name: "quoted param", cmdline: `"agent.no_proxy=a b" agent.trace`, want: func(c *Config) { c.NoProxy = "a b"; c.Trace = true }},
		{name: "quoted flag", cmdline: `"agent.devmode"`, want: func(c *Config) { c.DevMode = true }},
		{name: "quoted server_addr", cmdline: `agent.server_addr="unix:///run/a.sock"`, want: func(c *Config) { c.ServerAddr = "unix:///run/a.sock" }},
		{name: "tabs and newlines", cmdline: "\tagent.devmode\n\nagent.log=error\r\n", want: func(c *Config) {
			c.DevMode = true
			c.LogLevel, c.LogLevelName = slog.LevelError, "error"
		}},

		// mem-agent.
		{name: "mem_agent enabled", cmdline: "agent.mem_agent_enable=1 agent.mem_agent_memcg_period_secs=300 agent.mem_agent_compact_order=6 agent.mem_agent_memcg_disable=true agent.mem_agent_compact_sec_max=-1",
			want: func(c *Config) {
				c.MemAgent = MemAgent{Enable: true, MemcgPeriodSecs: ptr[uint64](300), CompactOrder: ptr[uint8](6),
					MemcgDisable: ptr(true), CompactSecMax: ptr[int64](-1)}
			}},
		{name: "mem_agent keys before enable apply", cmdline: "agent.mem_agent_compact_threshold=1024 agent.mem_agent_enable",
			want: func(c *Config) { c.MemAgent = MemAgent{Enable: true, CompactThreshold: ptr[uint64](1024)} }},
		{name: "mem_agent all keys", cmdline: "agent.mem_agent_enable agent.mem_agent_memcg_disable=0 agent.mem_agent_memcg_swap=1 " +
			"agent.mem_agent_memcg_swappiness_max=60 agent.mem_agent_memcg_period_secs=1 agent.mem_agent_memcg_period_psi_percent_limit=2 " +
			"agent.mem_agent_memcg_eviction_psi_percent_limit=3 agent.mem_agent_memcg_eviction_run_aging_count_min=4 " +
			"agent.mem_agent_compact_disable=false agent.mem_agent_compact_period_secs=5 agent.mem_agent_compact_period_psi_percent_limit=6 " +
			"agent.mem_agent_compact_psi_percent_limit=7 agent.mem_agent_compact_sec_max=8 agent.mem_agent_compact_order=9 " +
			"agent.mem_agent_compact_threshold=10 agent.mem_agent_compact_force_times=18446744073709551615",
			want: func(c *Config) {
				c.MemAgent = MemAgent{Enable: true, MemcgDisable: ptr(false), MemcgSwap: ptr(true), MemcgSwappinessMax: ptr[uint8](60),
					MemcgPeriodSecs: ptr[uint64](1), MemcgPeriodPSIPercentLimit: ptr[uint8](2), MemcgEvictionPSIPercentLimit: ptr[uint8](3),
					MemcgEvictionRunAgingCountMin: ptr[uint64](4), CompactDisable: ptr(false), CompactPeriodSecs: ptr[uint64](5),
					CompactPeriodPSIPercentLimit: ptr[uint8](6), CompactPSIPercentLimit: ptr[uint8](7), CompactSecMax: ptr[int64](8),
					CompactOrder: ptr[uint8](9), CompactThreshold: ptr[uint64](10), CompactForceTimes: ptr[uint64](18446744073709551615)}
			}},
		{name: "mem_agent keys without enable dropped", cmdline: "agent.mem_agent_memcg_swap=true",
			want: func(*Config) {}, wantWarns: []string{"agent.mem_agent_*"}},

		// Unknown keys.
		{name: "unknown agent key", cmdline: "agent.bogus=1 agent.devmode", want: func(c *Config) { c.DevMode = true }, wantWarns: []string{"agent.bogus"}},
		{name: "unknown bare agent key", cmdline: "agent.whatever", want: func(*Config) {}, wantWarns: []string{"agent.whatever"}},
		{name: "stale README key", cmdline: "agent.enable_signature_verification=false", want: func(*Config) {}, wantWarns: []string{"agent.enable_signature_verification"}},
		{name: "log_level hint", cmdline: "agent.log_level=debug", want: func(*Config) {}, wantWarns: []string{"agent.log_level"}},
		{name: "unknown key with control chars is escaped", cmdline: "agent.x\x01y=1", want: func(*Config) {}, wantWarns: []string{`"agent.x\x01y"`}},

		// config_file.
		{name: "config_file replaces cmdline", cmdline: "agent.log=debug agent.config_file=/etc/agent.toml agent.devmode systemd.unified_cgroup_hierarchy=1 agent.config_file=/other",
			want:      func(c *Config) { c.ConfigFile = "/etc/agent.toml" },
			wantWarns: []string{"agent.config_file", "agent.log", "agent.devmode", "systemd.unified_cgroup_hierarchy"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, warns, err := ParseCmdline(tc.cmdline)
			if err != nil {
				t.Fatalf("ParseCmdline(%q): %v", tc.cmdline, err)
			}
			want := Default()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ParseCmdline(%q)\n got  %+v\n want %+v", tc.cmdline, got, want)
			}
			var keys []string
			for _, w := range warns {
				keys = append(keys, w.Key)
				if w.Source != "cmdline" || w.Message == "" {
					t.Errorf("bad warning %+v", w)
				}
			}
			if !reflect.DeepEqual(keys, tc.wantWarns) {
				t.Errorf("warning keys = %q, want %q (warnings %v)", keys, tc.wantWarns, warns)
			}
			if got.ConfigFile == "" {
				if err := got.Validate(); err != nil {
					t.Errorf("Validate: %v", err)
				}
			}
		})
	}
}

func TestParseCmdlineHints(t *testing.T) {
	_, warns, err := ParseCmdline("agent.dev_mode agent.policy_file=/x")
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 2 || !strings.Contains(warns[0].Message, "agent.devmode") ||
		!strings.Contains(warns[1].Message, "KATA_AGENT_POLICY_FILE") {
		t.Errorf("warnings = %v", warns)
	}
	for _, w := range warns {
		if strings.Contains(w.String(), "/x") {
			t.Errorf("warning echoes the value: %v", w)
		}
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    []string // substrings of the error
	}{
		{"bad bool", "agent.devmode=maybe", []string{"agent.devmode", `"maybe"`}},
		{"negative bool", "agent.trace=-1", []string{"agent.trace", `"-1"`}},
		{"empty bool", "agent.debug_console=", []string{"agent.debug_console", "empty"}},
		{"bad log", "agent.log=verbose", []string{"agent.log", `"verbose"`}},
		{"bare log", "agent.log", []string{"agent.log", "requires a value"}},
		{"empty log", "agent.log=", []string{"agent.log", "empty"}},
		{"bad timeout", "agent.hotplug_timeout=abc", []string{"agent.hotplug_timeout", `"abc"`}},
		{"negative timeout", "agent.cdh_api_timeout=-3", []string{"agent.cdh_api_timeout", `"-3"`}},
		{"negative Go duration", "agent.cdi_timeout=-3s", []string{"agent.cdi_timeout"}},
		{"huge timeout", "agent.image_pull_timeout=99999999999999", []string{"agent.image_pull_timeout", "too large"}},
		{"bad launch timeout", "agent.launch_process_timeout=1.5", []string{"agent.launch_process_timeout"}},
		{"bad port", "agent.debug_console_vport=x", []string{"agent.debug_console_vport", `"x"`}},
		{"port too big", "agent.log_vport=4294967296", []string{"agent.log_vport"}},
		{"port with equals", "agent.passfd_listener_port=1=2", []string{"agent.passfd_listener_port"}},
		{"bad pipe size", "agent.container_pipe_size=big", []string{"agent.container_pipe_size"}},
		{"negative pipe size", "agent.container_pipe_size=-1", []string{"agent.container_pipe_size", "negative"}},
		{"bad server_addr", "agent.server_addr=tcp://1.2.3.4:1", []string{"agent.server_addr"}},
		{"server_addr bad port", "agent.server_addr=vsock://-1:x", []string{"agent.server_addr"}},
		{"empty server_addr", "agent.server_addr=", []string{"agent.server_addr"}},
		{"bad procs", "agent.guest_components_procs=all", []string{"agent.guest_components_procs", `"all"`}},
		{"procs case", "agent.guest_components_procs=None", []string{"agent.guest_components_procs"}},
		{"bad rest api", "agent.guest_components_rest_api=none", []string{"agent.guest_components_rest_api", `"none"`}},
		{"bad secure storage", "agent.secure_storage_integrity=maybe", []string{"agent.secure_storage_integrity"}},
		{"bad proxy", "agent.https_proxy=proxy_without_scheme", []string{"agent.https_proxy"}},
		{"bad unified cgroup", "systemd.unified_cgroup_hierarchy=perhaps", []string{"systemd.unified_cgroup_hierarchy", `"perhaps"`}},
		{"bad module", "agent.kernel_modules=vsock,../evil.ko", []string{"agent.kernel_modules", "../evil.ko"}},
		{"module path not .ko", "agent.kernel_modules=/etc/passwd", []string{"agent.kernel_modules"}},
		{"test_transport vsock", "agent.test_transport=vsock://-1:1024", []string{"agent.test_transport", "scheme"}},
		{"test_transport bad", "agent.test_transport=tcp:nope", []string{"agent.test_transport"}},
		{"mem u8 overflow", "agent.mem_agent_enable agent.mem_agent_compact_order=256", []string{"agent.mem_agent_compact_order", `"256"`}},
		{"mem u64 negative", "agent.mem_agent_memcg_period_secs=-1", []string{"agent.mem_agent_memcg_period_secs"}},
		{"mem bool", "agent.mem_agent_memcg_swap=sure", []string{"agent.mem_agent_memcg_swap"}},
		{"mem i64", "agent.mem_agent_compact_sec_max=1e3", []string{"agent.mem_agent_compact_sec_max"}},
		{"empty config_file", "agent.config_file=", []string{"agent.config_file", "empty"}},
		{"bad value even with config_file", "agent.config_file=/x agent.log=nope", []string{"agent.log"}},
		{"long value is cut", "agent.log=" + strings.Repeat("v", 500), []string{"agent.log", "..."}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseCmdline(tc.cmdline)
			if err == nil {
				t.Fatalf("ParseCmdline(%q) succeeded, want error", tc.cmdline)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestParseCmdlineProxyRedacted(t *testing.T) {
	for _, v := range []string{
		"ht tp://user:s3cret@proxy:1", // not a URL
		"user:s3cret@proxy:3128",      // no scheme
		"1http://user:s3cret@proxy/",  // bad scheme
	} {
		t.Run(v, func(t *testing.T) {
			_, _, err := ParseCmdline(`agent.https_proxy="` + v + `"`)
			if err == nil {
				t.Fatal("want error")
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "user") {
				t.Errorf("error leaks credentials: %v", err)
			}
			if !strings.Contains(err.Error(), "agent.https_proxy") || !strings.Contains(err.Error(), "REDACTED@") {
				t.Errorf("error %q should name the key and show the redacted value", err)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []cmdParam
	}{
		{"", nil},
		{"   \n", nil},
		{"a", []cmdParam{{key: "a"}}},
		{"a=", []cmdParam{{key: "a", hasVal: true}}},
		{"a=b=c", []cmdParam{{key: "a", val: "b=c", hasVal: true}}},
		{`a="b c" d`, []cmdParam{{key: "a", val: "b c", hasVal: true}, {key: "d"}}},
		{`"a=b c"`, []cmdParam{{key: "a", val: "b c", hasVal: true}}},
		{`"a"`, []cmdParam{{key: "a"}}},
		{`a=b"c d"e f`, []cmdParam{{key: "a", val: `b"c d"e`, hasVal: true}, {key: "f"}}},
		{`a="`, []cmdParam{{key: "a", hasVal: true}}},
		{`a=""`, []cmdParam{{key: "a", hasVal: true}}},
		{`a="unterminated value`, []cmdParam{{key: "a", val: "unterminated value", hasVal: true}}},
		{`"`, nil},
		{"=x", []cmdParam{{key: "", val: "x", hasVal: true}}},
		{"a\tb\nc", []cmdParam{{key: "a"}, {key: "b"}, {key: "c"}}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got := splitCmdline(tc.in)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("splitCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"",
		"agent.debug_console agent.devmode agent.trace",
		"agent.log=debug agent.server_addr=vsock://-1:1024 agent.hotplug_timeout=10",
		`agent.no_proxy="a b" "agent.https_proxy=http://u:p@h:1"`,
		"agent.config_file=/etc/x.toml agent.log=info",
		"agent.mem_agent_enable=1 agent.mem_agent_compact_order=6",
		"systemd.unified_cgroup_hierarchy cgroup_no_v1=all",
		"agent.kernel_modules=a,b,/x.ko agent.test_transport=tcp:127.0.0.1:1",
		`"`, `a="`, "agent.=", "agent.log=\x00", "agent.hotplug_timeout=99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, warns, err := ParseCmdline(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error not ErrInvalidArgument: %v", err)
			}
			return
		}
		for _, w := range warns {
			_ = w.String()
		}
		if c.ConfigFile == "" {
			// Everything ParseCmdline accepts must pass Validate.
			if err := c.Validate(); err != nil {
				t.Fatalf("ParseCmdline(%q) accepted a config Validate rejects: %v", s, err)
			}
		}
	})
}

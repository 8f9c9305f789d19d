package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFile(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		want      func(c *Config)
		wantWarns []string
	}{
		{name: "empty", text: "", want: func(*Config) {}},
		{name: "kata sample", text: "# example\ndev_mode = true\nserver_addr = 'vsock://8:2048'\n\n[endpoints]\nallowed = [\"CreateContainerRequest\"]\n",
			want:      func(c *Config) { c.DevMode = true; c.ServerAddr = "vsock://8:2048" },
			wantWarns: []string{"endpoints"}},
		{name: "all scalar keys", text: `
debug_console = true
dev_mode = true
log_level = "debug"
visible_cdi_devices = true
debug_console_vport = 1026
log_vport = 1025
container_pipe_size = 4096
server_addr = "unix:///run/cova.sock"
passfd_listener_port = 1027
unified_cgroup_hierarchy = true
tracing = true
https_proxy = "http://proxy:3128"
no_proxy = "localhost"
guest_components_rest_api = "all"
guest_components_procs = "none"
secure_storage_integrity = false
policy_file = "/etc/policy.rego"
kernel_modules = ["virtio_console", "/lib/modules/vsock.ko"]
test_transport = "vport:agent.0"
`, want: func(c *Config) {
			c.DebugConsole, c.DevMode = true, true
			c.LogLevel, c.LogLevelName = slog.LevelDebug, "debug"
			c.VisibleCDIDevices = true
			c.DebugConsoleVport, c.LogVport, c.PassfdListenerPort = 1026, 1025, 1027
			c.ContainerPipeSize = 4096
			c.ServerAddr = "unix:///run/cova.sock"
			c.UnifiedCgroupHierarchy = true
			c.Trace = true
			c.HTTPSProxy, c.NoProxy = "http://proxy:3128", "localhost"
			c.GuestComponentsRestAPI, c.GuestComponentsProcs = RestAPIAll, ProcsNone
			c.SecureStorageIntegrity = false
			c.PolicyFile = "/etc/policy.rego"
			c.KernelModules = []string{"virtio_console", "/lib/modules/vsock.ko"}
			c.TestTransport = "vport:agent.0"
		}},
		{name: "kata duration table", text: "hotplug_timeout = { secs = 10, nanos = 500 }\n",
			want: func(c *Config) { c.HotplugTimeout = 10*time.Second + 500 }},
		{name: "duration table section form", text: "[cdh_api_timeout]\nsecs = 7\nnanos = 0\n",
			want: func(c *Config) { c.CdhAPITimeout = 7 * time.Second }},
		{name: "duration table nanos carry", text: "cdi_timeout = { secs = 1, nanos = 2500000000 }\n",
			want: func(c *Config) { c.CdiTimeout = 3500 * time.Millisecond }},
		{name: "duration table without nanos", text: "cdi_timeout = { secs = 4 }\n",
			want: func(c *Config) { c.CdiTimeout = 4 * time.Second }},
		{name: "duration array", text: "image_pull_timeout = [1800, 0]\n",
			want: func(c *Config) { c.ImagePullTimeout = 1800 * time.Second }},
		{name: "duration integer extension", text: "launch_process_timeout = 60\n",
			want: func(c *Config) { c.LaunchProcessTimeout = time.Minute }},
		{name: "duration string extension", text: "launch_process_timeout = \"1m30s\"\n",
			want: func(c *Config) { c.LaunchProcessTimeout = 90 * time.Second }},
		{name: "duration string seconds", text: "hotplug_timeout = \"12\"\n",
			want: func(c *Config) { c.HotplugTimeout = 12 * time.Second }},
		{name: "kernel_modules string", text: "kernel_modules = \"a, b,,c\"\n",
			want: func(c *Config) { c.KernelModules = []string{"a", "b", "c"} }},
		{name: "empty policy_file means default", text: "policy_file = \"\"\n", want: func(*Config) {}},
		{name: "mem_agent", text: "mem_agent_enable = true\nmem_agent_memcg_period_secs = 300\nmem_agent_compact_order = 6\nmem_agent_memcg_swap = true\nmem_agent_compact_sec_max = -1\nmem_agent_compact_force_times = 9223372036854775807\n",
			want: func(c *Config) {
				c.MemAgent = MemAgent{Enable: true, MemcgPeriodSecs: ptr[uint64](300), CompactOrder: ptr[uint8](6),
					MemcgSwap: ptr(true), CompactSecMax: ptr[int64](-1), CompactForceTimes: ptr[uint64](9223372036854775807)}
			}},
		{name: "mem_agent not enabled", text: "mem_agent_memcg_swap = true\n",
			want: func(*Config) {}, wantWarns: []string{"mem_agent_*"}},
		{name: "unknown keys", text: "bogus = 1\nlog = \"debug\"\ntrace = true\n[agent]\nlog = \"debug\"\n",
			want: func(*Config) {}, wantWarns: []string{"agent", "bogus", "log", "trace"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "agent.toml", tc.text)
			got, warns, err := LoadFile(path)
			if err != nil {
				t.Fatalf("LoadFile: %v", err)
			}
			want := Default()
			tc.want(&want)
			want.ConfigFile = path
			if !reflect.DeepEqual(got, want) {
				t.Errorf("LoadFile\n got  %+v\n want %+v", got, want)
			}
			var keys []string
			for _, w := range warns {
				if w.Source != "file" {
					t.Errorf("warning source %q", w.Source)
				}
				keys = append(keys, w.Key)
			}
			if !reflect.DeepEqual(keys, tc.wantWarns) {
				t.Errorf("warning keys = %q, want %q (%v)", keys, tc.wantWarns, warns)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestLoadFileHints(t *testing.T) {
	_, warns, err := LoadFile(writeFile(t, "a.toml", "devmode = true\n[agent]\ndev_mode = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 2 || !strings.Contains(warns[0].Message, `no "agent." prefix`) ||
		!strings.Contains(warns[1].Message, "dev_mode") {
		t.Errorf("warnings = %v", warns)
	}
}

func TestLoadFileErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"syntax", "dev_mode = = true", []string{"parsing TOML"}},
		{"wrong type", "dev_mode = \"yes\"", []string{"dev_mode"}},
		{"bad log level", "log_level = \"loud\"", []string{"log_level", `"loud"`}},
		{"negative duration", "hotplug_timeout = -1", []string{"hotplug_timeout"}},
		{"duration bad string", "cdh_api_timeout = \"soon\"", []string{"cdh_api_timeout", `"soon"`}},
		{"duration unknown field", "cdi_timeout = { secs = 1, nano = 0 }", []string{"cdi_timeout", "nano"}},
		{"duration no secs", "cdi_timeout = { nanos = 5 }", []string{"cdi_timeout", "secs"}},
		{"duration float", "cdi_timeout = 1.5", []string{"cdi_timeout"}},
		{"duration bool", "cdi_timeout = true", []string{"cdi_timeout"}},
		{"duration array length", "cdi_timeout = [1]", []string{"cdi_timeout"}},
		{"duration array types", "cdi_timeout = [\"1\", 0]", []string{"cdi_timeout"}},
		{"duration overflow", "image_pull_timeout = { secs = 9223372036854775807, nanos = 0 }", []string{"image_pull_timeout", "too large"}},
		{"duration negative nanos", "image_pull_timeout = { secs = 1, nanos = -1 }", []string{"image_pull_timeout"}},
		{"port negative", "log_vport = -1", []string{"log_vport"}},
		{"port too large", "debug_console_vport = 4294967296", []string{"debug_console_vport"}},
		{"pipe size negative", "container_pipe_size = -1", []string{"container_pipe_size"}},
		{"u8 overflow", "mem_agent_enable = true\nmem_agent_compact_order = 300", []string{"mem_agent_compact_order"}},
		{"u64 negative", "mem_agent_enable = true\nmem_agent_compact_threshold = -2", []string{"mem_agent_compact_threshold"}},
		{"kernel_modules bad element", "kernel_modules = [1]", []string{"kernel_modules"}},
		{"kernel_modules bad name", "kernel_modules = [\"a b\"]", []string{"kernel_modules"}},
		{"kernel_modules bad type", "kernel_modules = 3", []string{"kernel_modules"}},
		{"two errors reported", "log_vport = -1\nlog_level = \"x\"", []string{"log_vport", "log_level"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "agent.toml", tc.text)
			_, _, err := LoadFile(path)
			if err == nil {
				t.Fatal("LoadFile succeeded, want error")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
			for _, s := range append(tc.want, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestLoadFileNotFound(t *testing.T) {
	_, _, err := LoadFile(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, errdefs.ErrNotFound) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want ErrNotFound wrapping ErrNotExist", err)
	}
}

func TestLoadFileTooLarge(t *testing.T) {
	path := writeFile(t, "big.toml", "# "+strings.Repeat("x", maxFileSize)+"\n")
	_, _, err := LoadFile(path)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "larger") {
		t.Errorf("err = %v", err)
	}
}

// The file keys must cover every fileConfig field exactly once.
func TestFileKeysUnique(t *testing.T) {
	n := reflect.TypeFor[fileConfig]().NumField()
	if len(fileKeys) != n {
		t.Errorf("fileKeys has %d keys for %d fields (duplicate toml tag?)", len(fileKeys), n)
	}
	if fileKeys[""] {
		t.Error("a fileConfig field has no toml tag")
	}
}

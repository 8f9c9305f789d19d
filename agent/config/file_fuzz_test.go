package config

import (
	"errors"
	"math"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzParseFile fuzzes the TOML configuration file parser. Accepted files
// give a configuration whose parser-checked fields hold their limits, so
// Validate can only object to what the parser leaves to it; every error is
// INVALID_ARGUMENT, and proxy credentials never reach an error.
func FuzzParseFile(f *testing.F) {
	for _, s := range []string{
		"",
		"# example\ndev_mode = true\nserver_addr = 'vsock://8:2048'\n\n[endpoints]\nallowed = [\"CreateContainerRequest\"]\n",
		"debug_console = true\nlog_level = \"debug\"\ndebug_console_vport = 1026\nlog_vport = 1025\ncontainer_pipe_size = 4096\n" +
			"server_addr = \"unix:///run/cova.sock\"\npassfd_listener_port = 1027\nunified_cgroup_hierarchy = true\ntracing = true\n" +
			"https_proxy = \"http://user:hunter22@proxy:3128\"\nno_proxy = \"localhost\"\nguest_components_rest_api = \"all\"\n" +
			"guest_components_procs = \"none\"\nsecure_storage_integrity = false\npolicy_file = \"/etc/policy.rego\"\n" +
			"kernel_modules = [\"virtio_console\", \"/lib/modules/vsock.ko\"]\ntest_transport = \"vport:agent.0\"\n",
		"hotplug_timeout = {secs = 3, nanos = 5000000000}\ncdh_api_timeout = [1, 2]\nimage_pull_timeout = 30\ncdi_timeout = \"1m30s\"\nlaunch_process_timeout = {secs = 1}\n",
		"hotplug_timeout = {secs = 9223372036, nanos = 4294967295}\n",
		"hotplug_timeout = -1\ncdi_timeout = {secs = 1, extra = 2}\n",
		"mem_agent_enable = true\nmem_agent_memcg_swappiness_max = 150\nmem_agent_compact_order = 9\nmem_agent_compact_psi_percent_limit = 101\n",
		"mem_agent_memcg_swap = true\n",
		"kernel_modules = \"a, b,/lib/x.ko.zst\"\n",
		"kernel_modules = [\"../x\", 1]\n",
		"agent.log = \"debug\"\nlog = 1\n",
		"container_pipe_size = 99999999999\ndebug_console_vport = -1\n",
		"https_proxy = \"ftp://user:pa55word@h\"\n",
		"[[x]]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		c, warns, err := parseFile(text)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error without INVALID_ARGUMENT: %v", err)
			}
			if warns != nil {
				t.Fatal("warnings with an error")
			}
			return
		}
		if c.ConfigFile != "" || c.CgroupNoV1 != "" {
			t.Fatalf("parser set fields the file cannot: %q %q", c.ConfigFile, c.CgroupNoV1)
		}
		// Limits the parser enforces itself.
		if c.ContainerPipeSize < 0 || c.ContainerPipeSize > math.MaxInt32 {
			t.Fatalf("container_pipe_size %d", c.ContainerPipeSize)
		}
		for _, d := range []int64{int64(c.HotplugTimeout), int64(c.CdhAPITimeout), int64(c.ImagePullTimeout), int64(c.CdiTimeout), int64(c.LaunchProcessTimeout)} {
			if d < 0 {
				t.Fatalf("negative timeout %d", d)
			}
		}
		for i, m := range c.KernelModules {
			if err := checkKernelModule(m); err != nil {
				t.Fatalf("kernel_modules[%d] %q accepted: %v", i, m, err)
			}
		}
		if lvl, err := ParseLogLevel(c.LogLevelName); err != nil || lvl != c.LogLevel {
			t.Fatalf("log level %v named %q", c.LogLevel, c.LogLevelName)
		}
		if !c.MemAgent.Enable && c.MemAgent.anySet() {
			t.Fatal("mem-agent settings kept without mem_agent_enable")
		}
		if c.PolicyFile == "" {
			t.Fatal("empty policy_file kept")
		}
		// One warning per key, in key order, all from the file.
		if !sort.SliceIsSorted(warns, func(i, j int) bool { return warns[i].Key < warns[j].Key }) {
			t.Fatalf("warnings not sorted: %v", warns)
		}
		seen := map[string]bool{}
		for _, w := range warns {
			if w.Source != "file" || seen[w.Key] || fileKeys[strings.Trim(w.Key, `"`)] {
				t.Fatalf("bad warning %v", w)
			}
			seen[w.Key] = true
		}
		verr := c.Validate()
		if verr == nil {
			return
		}
		if !errors.Is(verr, errdefs.ErrInvalidArgument) {
			t.Fatalf("Validate error without INVALID_ARGUMENT: %v", verr)
		}
		var pw string
		if u, err := url.Parse(c.HTTPSProxy); err == nil && u.User != nil {
			pw, _ = u.User.Password()
			// A password that also spells the scheme, host or path cannot
			// be told apart from them in a message (a fuzz input had
			// "word://:word@").
			if strings.Contains(u.Scheme+"://"+u.Host+u.Path+u.User.Username(), pw) {
				pw = ""
			}
		}
		for _, line := range strings.Split(verr.Error(), "\n") {
			for _, field := range []string{"kernel_modules", "log_level", "container_pipe_size", "policy_file"} {
				if strings.HasPrefix(line, field) {
					t.Fatalf("parser accepted what Validate rejects: %s", line)
				}
			}
			if strings.HasPrefix(line, "https_proxy") && len(pw) >= 4 && strings.Contains(line, pw) {
				t.Fatalf("proxy password in an error: %s", line)
			}
		}
	})
}

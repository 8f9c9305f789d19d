package config

import (
	"fmt"
	"math"
	"time"

	"github.com/containerd/errdefs"
)

// cmdParam is one kernel command-line parameter after quote removal.
type cmdParam struct {
	key    string
	val    string
	hasVal bool // "key=..." rather than a bare "key"
}

func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// splitCmdline splits a command line the way the kernel's next_arg does:
// parameters are separated by blanks; double quotes group blanks into a
// parameter ("key=a b" or key="a b"), and a quote that opens the parameter or
// its value is removed together with the parameter's last character when that
// is a quote. Quotes elsewhere stay. (kata-agent splits on blanks only, so a
// quoted value never reaches it intact; accepting quotes is a superset.)
func splitCmdline(s string) []cmdParam {
	var out []cmdParam
	for {
		for len(s) > 0 && isSpace(s[0]) {
			s = s[1:]
		}
		if s == "" {
			return out
		}
		quoted, inQuote := false, false
		if s[0] == '"' {
			s = s[1:]
			quoted, inQuote = true, true
		}
		equals := -1
		i := 0
		for ; i < len(s); i++ {
			c := s[i]
			if isSpace(c) && !inQuote {
				break
			}
			if equals < 0 && c == '=' {
				equals = i
			}
			if c == '"' {
				inQuote = !inQuote
			}
		}
		tok := s[:i]
		s = s[i:]

		// The kernel blanks at most the token's last byte, when it is a quote
		// and either the value or the whole parameter opened with a quote.
		valQuoted := equals >= 0 && equals+1 < len(tok) && tok[equals+1] == '"'
		end := len(tok)
		if end > 0 && tok[end-1] == '"' && (valQuoted || quoted) {
			end--
		}
		var p cmdParam
		if equals < 0 {
			p.key = tok[:end]
		} else {
			p.key = tok[:equals]
			p.hasVal = true
			vstart := equals + 1
			if valQuoted {
				vstart++
			}
			if vstart < end {
				p.val = tok[vstart:end]
			}
		}
		if p.key != "" || p.hasVal {
			out = append(out, p)
		}
	}
}

const agentPrefix = "agent."

// cmdHandler parses one command-line key's value into the parser's Config.
// bare says the key may appear without "=value" (meaning true).
type cmdHandler struct {
	bare   bool
	secret bool // value is shown with URL userinfo redacted
	set    func(p *cmdParser, key, val string) error
}

type cmdParser struct {
	cfg   Config
	warns []Warning
}

func (p *cmdParser) warn(key, msg string) {
	p.warns = append(p.warns, Warning{Source: "cmdline", Key: key, Message: msg})
}

func boolKey(f func(*Config) *bool) cmdHandler {
	return cmdHandler{bare: true, set: func(p *cmdParser, _, v string) error {
		b, err := parseBool(v)
		if err != nil {
			return err
		}
		*f(&p.cfg) = b
		return nil
	}}
}

// portKey parses an i32 as kata-agent does; values <= 0 are ignored with a
// warning (kata-agent ignores them silently).
func portKey(f func(*Config) *uint32) cmdHandler {
	return cmdHandler{set: func(p *cmdParser, key, v string) error {
		n, ok := parseInt(v, math.MinInt32, math.MaxInt32)
		if !ok {
			return fmt.Errorf("not a 32-bit integer: %w", errdefs.ErrInvalidArgument)
		}
		if n <= 0 {
			p.warn(key, "value <= 0 ignored, keeping the default")
			return nil
		}
		*f(&p.cfg) = uint32(n)
		return nil
	}}
}

// durationKey parses integer seconds (or a Go duration); zero is ignored with
// a warning, as kata-agent ignores it.
func durationKey(f func(*Config) *time.Duration) cmdHandler {
	return cmdHandler{set: func(p *cmdParser, key, v string) error {
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		if d <= 0 {
			p.warn(key, "timeout 0 ignored, keeping the default")
			return nil
		}
		*f(&p.cfg) = d
		return nil
	}}
}

func stringKey(f func(*Config) *string) cmdHandler {
	return cmdHandler{set: func(p *cmdParser, _, v string) error {
		*f(&p.cfg) = v
		return nil
	}}
}

func memBool(f func(*MemAgent) **bool) cmdHandler {
	return cmdHandler{bare: true, set: func(p *cmdParser, _, v string) error {
		b, err := parseBool(v)
		if err != nil {
			return err
		}
		*f(&p.cfg.MemAgent) = &b
		return nil
	}}
}

func memU8(f func(*MemAgent) **uint8) cmdHandler {
	return cmdHandler{set: func(p *cmdParser, _, v string) error {
		n, ok := parseUint(v, math.MaxUint8)
		if !ok {
			return fmt.Errorf("not an integer in 0..255: %w", errdefs.ErrInvalidArgument)
		}
		u := uint8(n)
		*f(&p.cfg.MemAgent) = &u
		return nil
	}}
}

func memU64(f func(*MemAgent) **uint64) cmdHandler {
	return cmdHandler{set: func(p *cmdParser, _, v string) error {
		n, ok := parseUint(v, math.MaxUint64)
		if !ok {
			return fmt.Errorf("not an unsigned 64-bit integer: %w", errdefs.ErrInvalidArgument)
		}
		*f(&p.cfg.MemAgent) = &n
		return nil
	}}
}

// cmdlineKeys maps "agent.<name>" keys (without the prefix) to handlers.
var cmdlineKeys = map[string]cmdHandler{
	"debug_console":       boolKey(func(c *Config) *bool { return &c.DebugConsole }),
	"devmode":             boolKey(func(c *Config) *bool { return &c.DevMode }),
	"trace":               boolKey(func(c *Config) *bool { return &c.Trace }),
	"visible_cdi_devices": boolKey(func(c *Config) *bool { return &c.VisibleCDIDevices }),
	"secure_storage_integrity": boolKey(func(c *Config) *bool {
		return &c.SecureStorageIntegrity
	}),

	"log": {set: func(p *cmdParser, _, v string) error {
		lvl, err := ParseLogLevel(v)
		if err != nil {
			return err
		}
		p.cfg.LogLevel, p.cfg.LogLevelName = lvl, v
		return nil
	}},

	"server_addr": {set: func(p *cmdParser, _, v string) error {
		a, err := ParseAddr(v)
		if err != nil {
			return err
		}
		if a.Scheme != SchemeVsock && a.Scheme != SchemeUnix {
			return fmt.Errorf("scheme %q not allowed (want vsock:// or unix://; use agent.test_transport for test transports): %w", a.Scheme, errdefs.ErrInvalidArgument)
		}
		p.cfg.ServerAddr = v
		return nil
	}},

	"debug_console_vport":  portKey(func(c *Config) *uint32 { return &c.DebugConsoleVport }),
	"log_vport":            portKey(func(c *Config) *uint32 { return &c.LogVport }),
	"passfd_listener_port": portKey(func(c *Config) *uint32 { return &c.PassfdListenerPort }),

	"hotplug_timeout":        durationKey(func(c *Config) *time.Duration { return &c.HotplugTimeout }),
	"cdh_api_timeout":        durationKey(func(c *Config) *time.Duration { return &c.CdhAPITimeout }),
	"image_pull_timeout":     durationKey(func(c *Config) *time.Duration { return &c.ImagePullTimeout }),
	"cdi_timeout":            durationKey(func(c *Config) *time.Duration { return &c.CdiTimeout }),
	"launch_process_timeout": durationKey(func(c *Config) *time.Duration { return &c.LaunchProcessTimeout }),

	"container_pipe_size": {set: func(p *cmdParser, _, v string) error {
		n, ok := parseInt(v, math.MinInt32, math.MaxInt32)
		if !ok {
			return fmt.Errorf("not a 32-bit integer: %w", errdefs.ErrInvalidArgument)
		}
		if n < 0 {
			return fmt.Errorf("must not be negative: %w", errdefs.ErrInvalidArgument)
		}
		p.cfg.ContainerPipeSize = int(n)
		return nil
	}},

	"https_proxy": {secret: true, set: func(p *cmdParser, _, v string) error {
		if err := checkProxyURL(v); err != nil {
			return fmt.Errorf("want http(s):// or socks5(h):// URL with a host: %w", errdefs.ErrInvalidArgument)
		}
		p.cfg.HTTPSProxy = v
		return nil
	}},
	"no_proxy": stringKey(func(c *Config) *string { return &c.NoProxy }),

	"guest_components_procs": {set: func(p *cmdParser, _, v string) error {
		g := GuestComponentsProcs(v)
		if !g.Valid() {
			return fmt.Errorf("want none, attestation-agent, confidential-data-hub or api-server-rest: %w", errdefs.ErrInvalidArgument)
		}
		p.cfg.GuestComponentsProcs = g
		return nil
	}},
	"guest_components_rest_api": {set: func(p *cmdParser, _, v string) error {
		r := GuestComponentsRestAPI(v)
		if !r.Valid() {
			return fmt.Errorf("want all, attestation or resource: %w", errdefs.ErrInvalidArgument)
		}
		p.cfg.GuestComponentsRestAPI = r
		return nil
	}},

	"config_file": {set: func(p *cmdParser, key, v string) error {
		if p.cfg.ConfigFile != "" {
			// kata-agent acts on the first one.
			p.warn(key, "repeated; the first agent.config_file is used")
			return nil
		}
		p.cfg.ConfigFile = v
		return nil
	}},

	"kernel_modules": {set: func(p *cmdParser, _, v string) error {
		mods := splitList(v)
		for _, m := range mods {
			if err := checkKernelModule(m); err != nil {
				return err
			}
		}
		p.cfg.KernelModules = mods
		return nil
	}},

	"test_transport": {set: func(p *cmdParser, _, v string) error {
		a, err := ParseAddr(v)
		if err != nil {
			return err
		}
		if a.Scheme != SchemeVport && a.Scheme != SchemeTCP {
			return fmt.Errorf("scheme %q not allowed (want vport: or tcp:): %w", a.Scheme, errdefs.ErrInvalidArgument)
		}
		p.cfg.TestTransport = v
		return nil
	}},

	"mem_agent_enable":        boolKey(func(c *Config) *bool { return &c.MemAgent.Enable }),
	"mem_agent_memcg_disable": memBool(func(m *MemAgent) **bool { return &m.MemcgDisable }),
	"mem_agent_memcg_swap":    memBool(func(m *MemAgent) **bool { return &m.MemcgSwap }),
	"mem_agent_memcg_swappiness_max": memU8(func(m *MemAgent) **uint8 {
		return &m.MemcgSwappinessMax
	}),
	"mem_agent_memcg_period_secs": memU64(func(m *MemAgent) **uint64 { return &m.MemcgPeriodSecs }),
	"mem_agent_memcg_period_psi_percent_limit": memU8(func(m *MemAgent) **uint8 {
		return &m.MemcgPeriodPSIPercentLimit
	}),
	"mem_agent_memcg_eviction_psi_percent_limit": memU8(func(m *MemAgent) **uint8 {
		return &m.MemcgEvictionPSIPercentLimit
	}),
	"mem_agent_memcg_eviction_run_aging_count_min": memU64(func(m *MemAgent) **uint64 {
		return &m.MemcgEvictionRunAgingCountMin
	}),
	"mem_agent_compact_disable":     memBool(func(m *MemAgent) **bool { return &m.CompactDisable }),
	"mem_agent_compact_period_secs": memU64(func(m *MemAgent) **uint64 { return &m.CompactPeriodSecs }),
	"mem_agent_compact_period_psi_percent_limit": memU8(func(m *MemAgent) **uint8 {
		return &m.CompactPeriodPSIPercentLimit
	}),
	"mem_agent_compact_psi_percent_limit": memU8(func(m *MemAgent) **uint8 {
		return &m.CompactPSIPercentLimit
	}),
	"mem_agent_compact_sec_max": {set: func(p *cmdParser, _, v string) error {
		n, ok := parseInt(v, math.MinInt64, math.MaxInt64)
		if !ok {
			return fmt.Errorf("not a 64-bit integer: %w", errdefs.ErrInvalidArgument)
		}
		p.cfg.MemAgent.CompactSecMax = &n
		return nil
	}},
	"mem_agent_compact_order":       memU8(func(m *MemAgent) **uint8 { return &m.CompactOrder }),
	"mem_agent_compact_threshold":   memU64(func(m *MemAgent) **uint64 { return &m.CompactThreshold }),
	"mem_agent_compact_force_times": memU64(func(m *MemAgent) **uint64 { return &m.CompactForceTimes }),
}

// Non-agent keys kata-agent reads.
const (
	keyUnifiedCgroup = "systemd.unified_cgroup_hierarchy"
	keyCgroupNoV1    = "cgroup_no_v1"
)

// cmdlineHints suggests the right key for common mistakes.
var cmdlineHints = map[string]string{
	"agent.log_level":   "agent.log",
	"agent.dev_mode":    "agent.devmode",
	"agent.tracing":     "agent.trace",
	"agent.policy_file": "KATA_AGENT_POLICY_FILE or policy_file in a config file (not a command-line key)",
}

// ParseCmdline parses a kernel command line as kata-agent does, starting
// from Default():
//
//   - agent.debug_console, agent.devmode and agent.trace are flags; every
//     boolean key also takes =true/false/0/1 (and, as a Cova extension,
//     yes/no/on/off).
//   - Timeouts are integer seconds (Cova also accepts "1m30s"). A timeout or
//     port of 0 is ignored with a warning, keeping the default, as kata does.
//   - Double quotes are handled like the kernel: agent.no_proxy="a b".
//   - systemd.unified_cgroup_hierarchy=<bool> (bare = true) and cgroup_no_v1=all
//     select cgroup v2; other non-agent keys are ignored.
//   - Repeated keys: the last wins, except agent.config_file (the first wins).
//   - Unknown agent.* keys are Warnings. A bad value is an error wrapping
//     errdefs.ErrInvalidArgument that names the key and the value (proxy
//     credentials redacted).
//   - mem_agent_* keys apply only when agent.mem_agent_enable is true, in any
//     order (kata-agent drops those written before mem_agent_enable).
//
// When agent.config_file is present, every key is still checked, but the
// result is Default() with only ConfigFile set (the file replaces the
// command line) and each ignored key gets a Warning. Load then reads the file.
func ParseCmdline(cmdline string) (Config, []Warning, error) {
	p := &cmdParser{cfg: Default()}
	var ignorable []string // keys a config file would replace
	for _, prm := range splitCmdline(cmdline) {
		key, val := prm.key, prm.val
		shown := func() string { return quoteValue(val) }

		switch key {
		case keyUnifiedCgroup:
			b := true
			if prm.hasVal {
				var err error
				if b, err = parseBool(val); err != nil {
					return Config{}, nil, fmt.Errorf("%s: invalid value %s: %w", key, shown(), err)
				}
			}
			p.cfg.UnifiedCgroupHierarchy = b
			ignorable = append(ignorable, key)
			continue
		case keyCgroupNoV1:
			// The kernel takes a list of controllers; kata-agent acts only on "all".
			if val == "all" {
				p.cfg.CgroupNoV1 = "all"
				ignorable = append(ignorable, key)
			}
			continue
		}

		if len(key) < len(agentPrefix) || key[:len(agentPrefix)] != agentPrefix {
			continue
		}
		if key == KeyAAKBCParams {
			// Read by guest-components, not by the agent's configuration
			// (ParseGuestComponents), with any value or none.
			continue
		}
		h, ok := cmdlineKeys[key[len(agentPrefix):]]
		if !ok {
			msg := "unknown key, ignored"
			if hint, ok := cmdlineHints[key]; ok {
				msg += "; did you mean " + hint + "?"
			}
			p.warn(quoteKey(key), msg)
			continue
		}
		if h.secret {
			shown = func() string { return quoteValue(redactUserinfo(val)) }
		}
		switch {
		case !prm.hasVal && h.bare:
			val = "true"
		case !prm.hasVal:
			return Config{}, nil, fmt.Errorf("%s: requires a value (%s=...): %w", key, key, errdefs.ErrInvalidArgument)
		case val == "":
			return Config{}, nil, fmt.Errorf("%s: empty value: %w", key, errdefs.ErrInvalidArgument)
		}
		if err := h.set(p, key, val); err != nil {
			return Config{}, nil, fmt.Errorf("%s: invalid value %s: %w", key, shown(), err)
		}
		if key != agentPrefix+"config_file" {
			ignorable = append(ignorable, key)
		}
	}

	if p.cfg.ConfigFile != "" {
		out := Default()
		out.ConfigFile = p.cfg.ConfigFile
		seen := map[string]bool{}
		for _, k := range ignorable {
			if !seen[k] {
				seen[k] = true
				p.warn(k, "ignored: agent.config_file is set and the file replaces command-line keys")
			}
		}
		return out, p.warns, nil
	}

	if !p.cfg.MemAgent.Enable && p.cfg.MemAgent.anySet() {
		p.warn("agent.mem_agent_*", "ignored: agent.mem_agent_enable is not set")
		p.cfg.MemAgent = MemAgent{}
	}
	return p.cfg, p.warns, nil
}

// quoteKey renders an unknown key for a warning: bounded and escaped, but
// unquoted when it is plain.
func quoteKey(k string) string {
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return quoteValue(k)
		}
	}
	if len(k) > maxShown {
		return k[:maxShown] + "..."
	}
	return k
}

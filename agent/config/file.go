package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// maxFileSize bounds what LoadFile reads; kata config files are a few lines.
const maxFileSize = 1 << 20

// fileConfig mirrors kata-agent's TOML keys (its AgentConfigBuilder field
// names) plus Cova's. Durations and lists are decoded as any and converted
// by hand so errors can name the key.
type fileConfig struct {
	DebugConsole         *bool   `toml:"debug_console"`
	DevMode              *bool   `toml:"dev_mode"`
	LogLevel             *string `toml:"log_level"`
	HotplugTimeout       any     `toml:"hotplug_timeout"`
	CdhAPITimeout        any     `toml:"cdh_api_timeout"`
	ImagePullTimeout     any     `toml:"image_pull_timeout"`
	CdiTimeout           any     `toml:"cdi_timeout"`
	LaunchProcessTimeout any     `toml:"launch_process_timeout"`
	VisibleCDIDevices    *bool   `toml:"visible_cdi_devices"`
	DebugConsoleVport    *int64  `toml:"debug_console_vport"`
	LogVport             *int64  `toml:"log_vport"`
	ContainerPipeSize    *int64  `toml:"container_pipe_size"`
	ServerAddr           *string `toml:"server_addr"`
	PassfdListenerPort   *int64  `toml:"passfd_listener_port"`
	UnifiedCgroup        *bool   `toml:"unified_cgroup_hierarchy"`
	Tracing              *bool   `toml:"tracing"`
	HTTPSProxy           *string `toml:"https_proxy"`
	NoProxy              *string `toml:"no_proxy"`
	RestAPI              *string `toml:"guest_components_rest_api"`
	Procs                *string `toml:"guest_components_procs"`
	SecureStorage        *bool   `toml:"secure_storage_integrity"`
	PolicyFile           *string `toml:"policy_file"`

	MemAgentEnable                *bool  `toml:"mem_agent_enable"`
	MemcgDisable                  *bool  `toml:"mem_agent_memcg_disable"`
	MemcgSwap                     *bool  `toml:"mem_agent_memcg_swap"`
	MemcgSwappinessMax            *int64 `toml:"mem_agent_memcg_swappiness_max"`
	MemcgPeriodSecs               *int64 `toml:"mem_agent_memcg_period_secs"`
	MemcgPeriodPSIPercentLimit    *int64 `toml:"mem_agent_memcg_period_psi_percent_limit"`
	MemcgEvictionPSIPercentLimit  *int64 `toml:"mem_agent_memcg_eviction_psi_percent_limit"`
	MemcgEvictionRunAgingCountMin *int64 `toml:"mem_agent_memcg_eviction_run_aging_count_min"`
	CompactDisable                *bool  `toml:"mem_agent_compact_disable"`
	CompactPeriodSecs             *int64 `toml:"mem_agent_compact_period_secs"`
	CompactPeriodPSIPercentLimit  *int64 `toml:"mem_agent_compact_period_psi_percent_limit"`
	CompactPSIPercentLimit        *int64 `toml:"mem_agent_compact_psi_percent_limit"`
	CompactSecMax                 *int64 `toml:"mem_agent_compact_sec_max"`
	CompactOrder                  *int64 `toml:"mem_agent_compact_order"`
	CompactThreshold              *int64 `toml:"mem_agent_compact_threshold"`
	CompactForceTimes             *int64 `toml:"mem_agent_compact_force_times"`

	// Cova extensions.
	KernelModules any     `toml:"kernel_modules"`
	TestTransport *string `toml:"test_transport"`
}

// fileKeys is the set of top-level keys fileConfig knows.
var fileKeys = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeFor[fileConfig]()
	for i := range t.NumField() {
		m[t.Field(i).Tag.Get("toml")] = true
	}
	return m
}()

// fileHints suggests the file key for command-line spellings.
var fileHints = map[string]string{
	"log":         "log_level",
	"devmode":     "dev_mode",
	"trace":       "tracing",
	"config_file": "(nothing: config_file is only a command-line key)",
}

// LoadFile reads a kata-agent TOML configuration file, starting from
// Default(). Keys are kata-agent's field names without the "agent." prefix
// (the Config field comments give each file key where it differs from the
// command line: dev_mode, log_level, tracing). Durations may be written
// as kata does, {secs = N, nanos = M} or [N, M], or (Cova extension) as
// integer seconds or a Go duration string such as "3s". Unknown keys are
// Warnings. The result is not validated; Load calls Validate.
func LoadFile(path string) (Config, []Warning, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Config{}, nil, fmt.Errorf("reading config file %q: %w: %w", path, errdefs.ErrNotFound, err)
		}
		return Config{}, nil, fmt.Errorf("reading config file %q: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Config{}, nil, fmt.Errorf("reading config file %q: %w", path, err)
	}
	if len(data) > maxFileSize {
		return Config{}, nil, fmt.Errorf("config file %q is larger than %d bytes: %w", path, maxFileSize, errdefs.ErrInvalidArgument)
	}
	cfg, warns, err := parseFile(string(data))
	if err != nil {
		return Config{}, nil, fmt.Errorf("config file %q: %w", path, err)
	}
	cfg.ConfigFile = path
	return cfg, warns, nil
}

// parseFile decodes TOML text into a Config.
func parseFile(text string) (Config, []Warning, error) {
	var fc fileConfig
	md, err := toml.Decode(text, &fc)
	if err != nil {
		return Config{}, nil, fmt.Errorf("parsing TOML: %w: %w", err, errdefs.ErrInvalidArgument)
	}

	// Report each unknown top-level key once. Sub-keys of known keys show up
	// as undecoded when the value is decoded into an any (duration tables).
	var warns []Warning
	reported := map[string]bool{}
	for _, k := range md.Undecoded() {
		if len(k) == 0 || fileKeys[k[0]] || reported[k[0]] {
			continue
		}
		name := k[0]
		reported[name] = true
		msg := "unknown key, ignored"
		if name == "agent" {
			msg += "; file keys have no \"agent.\" prefix"
		} else if hint, ok := fileHints[name]; ok {
			msg += "; did you mean " + hint + "?"
		}
		warns = append(warns, Warning{Source: "file", Key: quoteKey(name), Message: msg})
	}

	c := Default()
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", key, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument))
	}
	setBool := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	setBool(&c.DebugConsole, fc.DebugConsole)
	setBool(&c.DevMode, fc.DevMode)
	setBool(&c.VisibleCDIDevices, fc.VisibleCDIDevices)
	setBool(&c.UnifiedCgroupHierarchy, fc.UnifiedCgroup)
	setBool(&c.Trace, fc.Tracing)
	setBool(&c.SecureStorageIntegrity, fc.SecureStorage)

	if fc.LogLevel != nil {
		lvl, err := ParseLogLevel(*fc.LogLevel)
		if err != nil {
			errs = append(errs, fmt.Errorf("log_level: %w", err))
		} else {
			c.LogLevel, c.LogLevelName = lvl, *fc.LogLevel
		}
	}

	for _, d := range []struct {
		key string
		raw any
		dst *time.Duration
	}{
		{"hotplug_timeout", fc.HotplugTimeout, &c.HotplugTimeout},
		{"cdh_api_timeout", fc.CdhAPITimeout, &c.CdhAPITimeout},
		{"image_pull_timeout", fc.ImagePullTimeout, &c.ImagePullTimeout},
		{"cdi_timeout", fc.CdiTimeout, &c.CdiTimeout},
		{"launch_process_timeout", fc.LaunchProcessTimeout, &c.LaunchProcessTimeout},
	} {
		if d.raw == nil {
			continue
		}
		v, err := fileDuration(d.raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.key, err))
			continue
		}
		*d.dst = v
	}

	for _, p := range []struct {
		key string
		v   *int64
		dst *uint32
	}{
		{"debug_console_vport", fc.DebugConsoleVport, &c.DebugConsoleVport},
		{"log_vport", fc.LogVport, &c.LogVport},
		{"passfd_listener_port", fc.PassfdListenerPort, &c.PassfdListenerPort},
	} {
		if p.v == nil {
			continue
		}
		if *p.v < 0 || *p.v > math.MaxUint32 {
			bad(p.key, "must be a port in 0..4294967295, got %d", *p.v)
			continue
		}
		*p.dst = uint32(*p.v)
	}

	if v := fc.ContainerPipeSize; v != nil {
		if *v < 0 || *v > math.MaxInt32 {
			bad("container_pipe_size", "must be in 0..2147483647, got %d", *v)
		} else {
			c.ContainerPipeSize = int(*v)
		}
	}
	if v := fc.ServerAddr; v != nil {
		c.ServerAddr = *v
	}
	if v := fc.HTTPSProxy; v != nil {
		c.HTTPSProxy = *v
	}
	if v := fc.NoProxy; v != nil {
		c.NoProxy = *v
	}
	if v := fc.Procs; v != nil {
		c.GuestComponentsProcs = GuestComponentsProcs(*v)
	}
	if v := fc.RestAPI; v != nil {
		c.GuestComponentsRestAPI = GuestComponentsRestAPI(*v)
	}
	if v := fc.PolicyFile; v != nil && *v != "" {
		// kata-agent treats an empty policy_file as "use the default".
		c.PolicyFile = *v
	}
	if v := fc.TestTransport; v != nil {
		c.TestTransport = *v
	}
	if fc.KernelModules != nil {
		mods, err := fileStringList(fc.KernelModules)
		if err != nil {
			errs = append(errs, fmt.Errorf("kernel_modules: %w", err))
		} else {
			c.KernelModules = mods
		}
	}

	// mem-agent.
	m := &c.MemAgent
	setBool(&m.Enable, fc.MemAgentEnable)
	m.MemcgDisable = fc.MemcgDisable
	m.MemcgSwap = fc.MemcgSwap
	m.CompactDisable = fc.CompactDisable
	m.CompactSecMax = fc.CompactSecMax
	u8 := func(key string, v *int64) *uint8 {
		if v == nil {
			return nil
		}
		if *v < 0 || *v > math.MaxUint8 {
			bad(key, "must be in 0..255, got %d", *v)
			return nil
		}
		u := uint8(*v)
		return &u
	}
	u64 := func(key string, v *int64) *uint64 {
		if v == nil {
			return nil
		}
		if *v < 0 {
			bad(key, "must not be negative, got %d", *v)
			return nil
		}
		u := uint64(*v)
		return &u
	}
	m.MemcgSwappinessMax = u8("mem_agent_memcg_swappiness_max", fc.MemcgSwappinessMax)
	m.MemcgPeriodSecs = u64("mem_agent_memcg_period_secs", fc.MemcgPeriodSecs)
	m.MemcgPeriodPSIPercentLimit = u8("mem_agent_memcg_period_psi_percent_limit", fc.MemcgPeriodPSIPercentLimit)
	m.MemcgEvictionPSIPercentLimit = u8("mem_agent_memcg_eviction_psi_percent_limit", fc.MemcgEvictionPSIPercentLimit)
	m.MemcgEvictionRunAgingCountMin = u64("mem_agent_memcg_eviction_run_aging_count_min", fc.MemcgEvictionRunAgingCountMin)
	m.CompactPeriodSecs = u64("mem_agent_compact_period_secs", fc.CompactPeriodSecs)
	m.CompactPeriodPSIPercentLimit = u8("mem_agent_compact_period_psi_percent_limit", fc.CompactPeriodPSIPercentLimit)
	m.CompactPSIPercentLimit = u8("mem_agent_compact_psi_percent_limit", fc.CompactPSIPercentLimit)
	m.CompactOrder = u8("mem_agent_compact_order", fc.CompactOrder)
	m.CompactThreshold = u64("mem_agent_compact_threshold", fc.CompactThreshold)
	m.CompactForceTimes = u64("mem_agent_compact_force_times", fc.CompactForceTimes)

	if err := errors.Join(errs...); err != nil {
		return Config{}, nil, err
	}
	if !m.Enable && m.anySet() {
		warns = append(warns, Warning{Source: "file", Key: "mem_agent_*", Message: "ignored: mem_agent_enable is not true"})
		c.MemAgent = MemAgent{}
	}
	sort.SliceStable(warns, func(i, j int) bool { return warns[i].Key < warns[j].Key })
	return c, warns, nil
}

// fileDuration converts a decoded TOML value to a duration. Accepted:
//
//	{secs = N, nanos = M}  serde's std::time::Duration form, as kata-agent reads it
//	[N, M]                 serde's sequence form of the same
//	N                      integer seconds (Cova extension)
//	"1m30s"                Go duration string (Cova extension)
//
// nanos may exceed one second and carries into secs, as in Rust.
func fileDuration(raw any) (time.Duration, error) {
	bad := func(format string, args ...any) (time.Duration, error) {
		return 0, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	fromParts := func(secs, nanos any) (time.Duration, error) {
		s, ok1 := secs.(int64)
		n, ok2 := nanos.(int64)
		if !ok1 || !ok2 {
			return bad("secs and nanos must be integers")
		}
		if s < 0 || n < 0 || n > math.MaxUint32 {
			return bad("secs must be >= 0 and nanos in 0..4294967295")
		}
		s += n / int64(time.Second)
		n %= int64(time.Second)
		if s > maxSeconds {
			return bad("too large (max %d seconds)", maxSeconds)
		}
		whole := time.Duration(s) * time.Second
		if time.Duration(n) > math.MaxInt64-whole {
			return bad("too large (max %d seconds)", maxSeconds)
		}
		return whole + time.Duration(n), nil
	}
	switch v := raw.(type) {
	case int64:
		if v < 0 {
			return bad("negative duration %d", v)
		}
		return fromParts(v, int64(0))
	case string:
		d, err := parseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("invalid value %s: %w", quoteValue(v), err)
		}
		return d, nil
	case map[string]any:
		for k := range v {
			if k != "secs" && k != "nanos" {
				return bad("unknown field %s in duration table (want secs and nanos)", quoteKey(k))
			}
		}
		secs, ok := v["secs"]
		if !ok {
			return bad("duration table needs secs")
		}
		nanos, ok := v["nanos"]
		if !ok {
			// serde requires nanos; defaulting it to 0 is a Cova extension.
			nanos = int64(0)
		}
		return fromParts(secs, nanos)
	case []any:
		if len(v) != 2 {
			return bad("duration array must be [secs, nanos]")
		}
		return fromParts(v[0], v[1])
	}
	return bad("want {secs = N, nanos = M}, [N, M], integer seconds or a string like \"3s\"")
}

// fileStringList accepts a TOML array of strings or one comma-separated
// string.
func fileStringList(raw any) ([]string, error) {
	var out []string
	switch v := raw.(type) {
	case string:
		out = splitList(v)
	case []any:
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("element %d is not a string: %w", i, errdefs.ErrInvalidArgument)
			}
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	default:
		return nil, fmt.Errorf("want an array of strings or a comma-separated string: %w", errdefs.ErrInvalidArgument)
	}
	for i, m := range out {
		if err := checkKernelModule(m); err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
	}
	return out, nil
}

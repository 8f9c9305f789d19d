// Package config holds the Cova agent's configuration and loads it the way
// kata-agent does, so that a stock Kata Containers setup configures Cova
// without changes.
//
// Sources, in kata-agent's order (see Load):
//
//  1. The kernel command line (/proc/cmdline): "agent.*" keys, plus the
//     non-agent keys systemd.unified_cgroup_hierarchy and cgroup_no_v1.
//  2. A TOML file named by the --config flag or by agent.config_file= on the
//     command line. When a file is named it is used INSTEAD of the command
//     line keys. File keys are kata-agent's field names (no "agent." prefix;
//     note dev_mode, log_level and tracing differ from the command line's
//     devmode, log and trace).
//  3. Environment overrides: KATA_AGENT_SERVER_ADDR, KATA_AGENT_LOG_LEVEL,
//     KATA_AGENT_TRACING and KATA_AGENT_POLICY_FILE.
//  4. Validate.
//
// Cova extensions (not in kata-agent) are marked as such on the fields. The
// host controls the command line, so every value is parsed strictly: a bad
// value is an error naming the key, an unknown "agent.*" key is a Warning.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Defaults that are not zero values.
const (
	// DefaultServerAddr is kata-agent's listen address: vsock, any CID, port 1024.
	DefaultServerAddr = "vsock://-1:1024"
	// DefaultPolicyFile is the policy loaded at start when no other is named.
	DefaultPolicyFile = "/etc/kata-opa/default-policy.rego"
	// DefaultCmdlinePath is where Load reads the kernel command line.
	DefaultCmdlinePath = "/proc/cmdline"
	// DefaultLogLevelName is the default log level name.
	DefaultLogLevelName = "info"

	DefaultHotplugTimeout       = 3 * time.Second
	DefaultCdhAPITimeout        = 50 * time.Second
	DefaultImagePullTimeout     = 1200 * time.Second
	DefaultCdiTimeout           = 100 * time.Second
	DefaultLaunchProcessTimeout = 6 * time.Second
)

// Log levels beyond the four slog defines, matching kata-agent's slog levels.
const (
	// LevelTrace is below slog.LevelDebug; kata-agent also enables ttrpc
	// library logs at this level.
	LevelTrace = slog.LevelDebug - 4
	// LevelCritical is above slog.LevelError; logrus "fatal" and "panic" map
	// here (they log, they do not exit).
	LevelCritical = slog.LevelError + 4
)

// GuestComponentsProcs says which guest-component processes the agent
// starts. Each value implies the ones listed before it: attestation-agent,
// then confidential-data-hub, then api-server-rest.
type GuestComponentsProcs string

// Valid GuestComponentsProcs values.
const (
	ProcsNone                GuestComponentsProcs = "none"
	ProcsAttestationAgent    GuestComponentsProcs = "attestation-agent"
	ProcsConfidentialDataHub GuestComponentsProcs = "confidential-data-hub"
	ProcsAPIServerRest       GuestComponentsProcs = "api-server-rest"
)

func (p GuestComponentsProcs) rank() int {
	switch p {
	case ProcsNone:
		return 0
	case ProcsAttestationAgent:
		return 1
	case ProcsConfidentialDataHub:
		return 2
	case ProcsAPIServerRest:
		return 3
	}
	return -1
}

// Valid reports whether p is one of the four known values.
func (p GuestComponentsProcs) Valid() bool { return p.rank() >= 0 }

// Includes reports whether the setting p asks for component c, for example
// ProcsAPIServerRest.Includes(ProcsAttestationAgent) is true.
// ProcsNone includes nothing, and nothing includes an invalid value.
func (p GuestComponentsProcs) Includes(c GuestComponentsProcs) bool {
	return c != ProcsNone && c.rank() > 0 && p.rank() >= c.rank()
}

// GuestComponentsRestAPI selects the features api-server-rest exposes.
type GuestComponentsRestAPI string

// Valid GuestComponentsRestAPI values.
const (
	RestAPIAll         GuestComponentsRestAPI = "all"
	RestAPIAttestation GuestComponentsRestAPI = "attestation"
	RestAPIResource    GuestComponentsRestAPI = "resource"
)

// Valid reports whether r is one of the three known values.
func (r GuestComponentsRestAPI) Valid() bool {
	switch r {
	case RestAPIAll, RestAPIAttestation, RestAPIResource:
		return true
	}
	return false
}

// MemAgent holds kata's mem-agent settings (agent.mem_agent_*). Cova parses
// and validates them but implements no mem-agent behaviour. A nil field means
// "not set, use mem-agent's default". When Enable is false every other field
// is nil.
type MemAgent struct {
	Enable bool

	MemcgDisable                  *bool
	MemcgSwap                     *bool
	MemcgSwappinessMax            *uint8 // 0..200
	MemcgPeriodSecs               *uint64
	MemcgPeriodPSIPercentLimit    *uint8 // 0..100
	MemcgEvictionPSIPercentLimit  *uint8 // 0..100
	MemcgEvictionRunAgingCountMin *uint64

	CompactDisable               *bool
	CompactPeriodSecs            *uint64
	CompactPeriodPSIPercentLimit *uint8 // 0..100
	CompactPSIPercentLimit       *uint8 // 0..100
	CompactSecMax                *int64
	CompactOrder                 *uint8
	CompactThreshold             *uint64
	CompactForceTimes            *uint64
}

// anySet reports whether any optional field is set.
func (m *MemAgent) anySet() bool {
	return m.MemcgDisable != nil || m.MemcgSwap != nil || m.MemcgSwappinessMax != nil ||
		m.MemcgPeriodSecs != nil || m.MemcgPeriodPSIPercentLimit != nil ||
		m.MemcgEvictionPSIPercentLimit != nil || m.MemcgEvictionRunAgingCountMin != nil ||
		m.CompactDisable != nil || m.CompactPeriodSecs != nil ||
		m.CompactPeriodPSIPercentLimit != nil || m.CompactPSIPercentLimit != nil ||
		m.CompactSecMax != nil || m.CompactOrder != nil || m.CompactThreshold != nil ||
		m.CompactForceTimes != nil
}

// Config is the agent's configuration. Field comments give the command-line
// key, then the file key when it differs.
type Config struct {
	DebugConsole      bool   // agent.debug_console (flag)
	DebugConsoleVport uint32 // agent.debug_console_vport; 0 = none
	DevMode           bool   // agent.devmode (flag); file: dev_mode

	LogLevel     slog.Level // agent.log; file: log_level
	LogLevelName string     // the name as given (logrus names), e.g. "warning"
	LogVport     uint32     // agent.log_vport; 0 = console

	Trace bool // agent.trace (bare flag = true); file: tracing

	ServerAddr         string // agent.server_addr; vsock://CID:PORT or unix:///path
	PassfdListenerPort uint32 // agent.passfd_listener_port; 0 = off

	HotplugTimeout       time.Duration // agent.hotplug_timeout
	CdhAPITimeout        time.Duration // agent.cdh_api_timeout
	ImagePullTimeout     time.Duration // agent.image_pull_timeout
	CdiTimeout           time.Duration // agent.cdi_timeout
	LaunchProcessTimeout time.Duration // agent.launch_process_timeout

	VisibleCDIDevices bool // agent.visible_cdi_devices
	ContainerPipeSize int  // agent.container_pipe_size; 0 = kernel default, >= 0

	HTTPSProxy string // agent.https_proxy (URL; may hold credentials, never logged)
	NoProxy    string // agent.no_proxy

	GuestComponentsProcs   GuestComponentsProcs   // agent.guest_components_procs
	GuestComponentsRestAPI GuestComponentsRestAPI // agent.guest_components_rest_api
	SecureStorageIntegrity bool                   // agent.secure_storage_integrity

	// UnifiedCgroupHierarchy is systemd.unified_cgroup_hierarchy (file:
	// unified_cgroup_hierarchy). CgroupNoV1 is "all" when cgroup_no_v1=all is
	// on the command line, else "". Use CgroupV2 to decide.
	UnifiedCgroupHierarchy bool
	CgroupNoV1             string

	// PolicyFile is the policy loaded at start. Not a command-line key in
	// kata-agent: file key policy_file or env KATA_AGENT_POLICY_FILE.
	PolicyFile string

	MemAgent MemAgent // agent.mem_agent_enable and agent.mem_agent_{memcg,compact}_*

	// KernelModules (Cova extension): agent.kernel_modules=a,b,/lib/x.ko
	// (file: kernel_modules, an array or a comma-separated string). Each entry
	// is a module name or an absolute path to a .ko file (optionally .xz, .zst
	// or .gz compressed), loaded in order at boot.
	KernelModules []string

	// TestTransport (Cova extension, TEST ONLY): agent.test_transport=
	// vport:<name or /dev/vportNpM> or tcp:<host:port> (file: test_transport).
	// An extra listener for VM tests on hosts without vhost-vsock. Never set
	// it in production images.
	TestTransport string

	// ConfigFile is the TOML file the configuration came from, if any
	// (--config flag or agent.config_file).
	ConfigFile string
}

// Default returns kata-agent's defaults.
func Default() Config {
	return Config{
		LogLevel:               slog.LevelInfo,
		LogLevelName:           DefaultLogLevelName,
		ServerAddr:             DefaultServerAddr,
		HotplugTimeout:         DefaultHotplugTimeout,
		CdhAPITimeout:          DefaultCdhAPITimeout,
		ImagePullTimeout:       DefaultImagePullTimeout,
		CdiTimeout:             DefaultCdiTimeout,
		LaunchProcessTimeout:   DefaultLaunchProcessTimeout,
		GuestComponentsProcs:   ProcsAPIServerRest,
		GuestComponentsRestAPI: RestAPIResource,
		SecureStorageIntegrity: true,
		PolicyFile:             DefaultPolicyFile,
	}
}

// CgroupV2 reports whether the guest should mount only the unified (v2)
// cgroup hierarchy, as kata-agent decides it.
func (c *Config) CgroupV2() bool {
	return c.UnifiedCgroupHierarchy || c.CgroupNoV1 == "all"
}

// Warning is a non-fatal configuration problem, such as an unknown key.
type Warning struct {
	Source  string // "cmdline", "file", or "env"
	Key     string // the key as written
	Message string
}

func (w Warning) String() string {
	return fmt.Sprintf("%s: %s: %s", w.Source, w.Key, w.Message)
}

// Validate checks the whole configuration. It returns every problem found,
// joined; each wraps errdefs.ErrInvalidArgument.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument))
	}

	if a, err := ParseAddr(c.ServerAddr); err != nil {
		errs = append(errs, fmt.Errorf("server_addr: %w", err))
	} else if a.Scheme != SchemeVsock && a.Scheme != SchemeUnix {
		bad("server_addr", "scheme %q not allowed (want vsock:// or unix://; use test_transport for test transports)", a.Scheme)
	}
	if c.TestTransport != "" {
		if a, err := ParseAddr(c.TestTransport); err != nil {
			errs = append(errs, fmt.Errorf("test_transport: %w", err))
		} else if a.Scheme != SchemeVport && a.Scheme != SchemeTCP {
			bad("test_transport", "scheme %q not allowed (want vport: or tcp:)", a.Scheme)
		}
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"hotplug_timeout", c.HotplugTimeout},
		{"cdh_api_timeout", c.CdhAPITimeout},
		{"image_pull_timeout", c.ImagePullTimeout},
		{"cdi_timeout", c.CdiTimeout},
		{"launch_process_timeout", c.LaunchProcessTimeout},
	} {
		if d.v <= 0 {
			bad(d.name, "must be > 0, got %s", d.v)
		}
	}

	if c.LogLevelName != "" {
		lvl, err := ParseLogLevel(c.LogLevelName)
		if err != nil {
			bad("log_level", "unknown level %s", quoteValue(c.LogLevelName))
		} else if lvl != c.LogLevel {
			bad("log_level", "level %s does not match name %s", c.LogLevel, quoteValue(c.LogLevelName))
		}
	}
	if c.ContainerPipeSize < 0 || int64(c.ContainerPipeSize) > 1<<31-1 {
		bad("container_pipe_size", "must be in 0..2147483647, got %d", c.ContainerPipeSize)
	}
	if !c.GuestComponentsProcs.Valid() {
		bad("guest_components_procs", "unknown value %s (want none, attestation-agent, confidential-data-hub or api-server-rest)", quoteValue(string(c.GuestComponentsProcs)))
	}
	if !c.GuestComponentsRestAPI.Valid() {
		bad("guest_components_rest_api", "unknown value %s (want all, attestation or resource)", quoteValue(string(c.GuestComponentsRestAPI)))
	}
	if c.HTTPSProxy != "" {
		if err := checkProxyURL(c.HTTPSProxy); err != nil {
			errs = append(errs, fmt.Errorf("https_proxy: %w", err))
		}
	}
	if c.CgroupNoV1 != "" && c.CgroupNoV1 != "all" {
		bad("cgroup_no_v1", "must be \"all\" or empty, got %s", quoteValue(c.CgroupNoV1))
	}
	if c.PolicyFile == "" || !filepath.IsAbs(c.PolicyFile) {
		bad("policy_file", "must be an absolute path, got %s", quoteValue(c.PolicyFile))
	}
	for i, m := range c.KernelModules {
		if err := checkKernelModule(m); err != nil {
			errs = append(errs, fmt.Errorf("kernel_modules[%d]: %w", i, err))
		}
	}
	if err := c.MemAgent.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *MemAgent) validate() error {
	var errs []error
	if !m.Enable && m.anySet() {
		errs = append(errs, fmt.Errorf("mem_agent: settings given but mem_agent_enable is false: %w", errdefs.ErrInvalidArgument))
	}
	pct := func(name string, v *uint8) {
		if v != nil && *v > 100 {
			errs = append(errs, fmt.Errorf("%s: must be in 0..100, got %d: %w", name, *v, errdefs.ErrInvalidArgument))
		}
	}
	pct("mem_agent_memcg_period_psi_percent_limit", m.MemcgPeriodPSIPercentLimit)
	pct("mem_agent_memcg_eviction_psi_percent_limit", m.MemcgEvictionPSIPercentLimit)
	pct("mem_agent_compact_period_psi_percent_limit", m.CompactPeriodPSIPercentLimit)
	pct("mem_agent_compact_psi_percent_limit", m.CompactPSIPercentLimit)
	if v := m.MemcgSwappinessMax; v != nil && *v > 200 {
		errs = append(errs, fmt.Errorf("mem_agent_memcg_swappiness_max: must be in 0..200, got %d: %w", *v, errdefs.ErrInvalidArgument))
	}
	return errors.Join(errs...)
}

// Kernel module names: MODULE_NAME_LEN is 64 including the terminating NUL
// and the struct padding; names in practice are short.
var moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,55}$`)

var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

func checkKernelModule(s string) error {
	if strings.HasPrefix(s, "/") {
		if len(s) > 4096 || filepath.Clean(s) != s || strings.ContainsAny(s, "\x00,") {
			return fmt.Errorf("module path %s must be a clean absolute path: %w", quoteValue(s), errdefs.ErrInvalidArgument)
		}
		for _, suf := range moduleSuffixes {
			if strings.HasSuffix(s, suf) && len(s) > len(suf)+1 {
				return nil
			}
		}
		return fmt.Errorf("module path %s must end in .ko, .ko.xz, .ko.zst or .ko.gz: %w", quoteValue(s), errdefs.ErrInvalidArgument)
	}
	if !moduleNameRE.MatchString(s) {
		return fmt.Errorf("module %s is neither a module name ([A-Za-z0-9_-]) nor an absolute .ko path: %w", quoteValue(s), errdefs.ErrInvalidArgument)
	}
	return nil
}

package config

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
)

// Environment variables kata-agent reads as overrides.
const (
	EnvServerAddr = "KATA_AGENT_SERVER_ADDR"
	EnvLogLevel   = "KATA_AGENT_LOG_LEVEL"
	EnvTracing    = "KATA_AGENT_TRACING"
	EnvPolicyFile = "KATA_AGENT_POLICY_FILE"
)

// maxCmdlineSize bounds the kernel command line read (the kernel's own limit
// is a few KiB).
const maxCmdlineSize = 64 << 10

// LoadOptions tells Load where to look.
type LoadOptions struct {
	// CmdlinePath is the kernel command line file; "" means /proc/cmdline.
	CmdlinePath string
	// ConfigFileFlag is the value of the agent's --config/-c flag, if given.
	// It takes precedence and the command line is then not read at all.
	ConfigFileFlag string
	// Getenv looks up environment variables; nil means os.Getenv. An empty
	// value counts as unset.
	Getenv func(string) string
}

// Load builds the configuration in kata-agent's order:
//
//  1. If ConfigFileFlag is set, LoadFile(ConfigFileFlag); otherwise
//     ParseCmdline(contents of CmdlinePath), and if that names
//     agent.config_file, LoadFile of it instead.
//  2. Environment overrides: KATA_AGENT_SERVER_ADDR, KATA_AGENT_LOG_LEVEL,
//     KATA_AGENT_TRACING, KATA_AGENT_POLICY_FILE. (kata-agent skips this step
//     for agent.config_file; Cova applies it in every case.) An invalid log
//     level or tracing value is a Warning and is ignored, as kata-agent
//     ignores it; an invalid server address fails in Validate.
//  3. Validate.
func Load(ctx context.Context, opts LoadOptions) (Config, []Warning, error) {
	if err := ctx.Err(); err != nil {
		return Config{}, nil, err
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}

	var (
		cfg   Config
		warns []Warning
		err   error
	)
	if opts.ConfigFileFlag != "" {
		cfg, warns, err = LoadFile(opts.ConfigFileFlag)
		if err != nil {
			return Config{}, nil, fmt.Errorf("loading --config file: %w", err)
		}
	} else {
		path := opts.CmdlinePath
		if path == "" {
			path = DefaultCmdlinePath
		}
		text, rerr := readCmdline(path)
		if rerr != nil {
			return Config{}, nil, rerr
		}
		cfg, warns, err = ParseCmdline(text)
		if err != nil {
			return Config{}, nil, fmt.Errorf("kernel command line %s: %w", path, err)
		}
		if cfg.ConfigFile != "" {
			if err := ctx.Err(); err != nil {
				return Config{}, nil, err
			}
			fcfg, fwarns, err := LoadFile(cfg.ConfigFile)
			if err != nil {
				return Config{}, nil, fmt.Errorf("loading agent.config_file: %w", err)
			}
			cfg = fcfg
			warns = append(warns, fwarns...)
		}
	}

	warns = append(warns, applyEnv(&cfg, getenv)...)

	if err := cfg.Validate(); err != nil {
		return Config{}, warns, fmt.Errorf("invalid agent configuration: %w", err)
	}
	return cfg, warns, nil
}

func readCmdline(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading kernel command line: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCmdlineSize+1))
	if err != nil {
		return "", fmt.Errorf("reading kernel command line %s: %w", path, err)
	}
	if len(data) > maxCmdlineSize {
		return "", fmt.Errorf("kernel command line %s is larger than %d bytes: %w", path, maxCmdlineSize, errdefs.ErrInvalidArgument)
	}
	return string(data), nil
}

// applyEnv applies kata-agent's environment overrides.
func applyEnv(c *Config, getenv func(string) string) []Warning {
	var warns []Warning
	if v := getenv(EnvServerAddr); v != "" {
		c.ServerAddr = v
	}
	if v := getenv(EnvLogLevel); v != "" {
		if lvl, err := ParseLogLevel(v); err != nil {
			warns = append(warns, Warning{Source: "env", Key: EnvLogLevel, Message: "unknown log level, ignored"})
		} else {
			c.LogLevel, c.LogLevelName = lvl, v
		}
	}
	if v := getenv(EnvTracing); v != "" {
		b, err := parseBool(v)
		if err != nil {
			// kata-agent reads an unparsable value as false.
			warns = append(warns, Warning{Source: "env", Key: EnvTracing, Message: "not a boolean, tracing disabled"})
		}
		c.Trace = b
	}
	if v := getenv(EnvPolicyFile); v != "" {
		c.PolicyFile = v
	}
	return warns
}

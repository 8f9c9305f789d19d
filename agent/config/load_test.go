package config

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	fileA := filepath.Join(dir, "a.toml")
	if err := os.WriteFile(fileA, []byte("dev_mode = true\nserver_addr = 'unix:///run/from-file.sock'\nlog_level = 'error'\nhotplug_timeout = { secs = 9, nanos = 0 }\nbogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fileB := filepath.Join(dir, "b.toml")
	if err := os.WriteFile(fileB, []byte("debug_console = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmdline := func(s string) string {
		p := filepath.Join(t.TempDir(), "cmdline")
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	tests := []struct {
		name      string
		opts      LoadOptions
		check     func(t *testing.T, c Config)
		wantWarns []string
	}{
		{
			name: "cmdline only",
			opts: LoadOptions{CmdlinePath: cmdline("agent.log=debug agent.hotplug_timeout=7"), Getenv: envMap(nil)},
			check: func(t *testing.T, c Config) {
				if c.LogLevel != slog.LevelDebug || c.HotplugTimeout != 7*time.Second || c.ConfigFile != "" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "config_file on cmdline replaces cmdline keys",
			opts: LoadOptions{CmdlinePath: cmdline("agent.debug_console agent.config_file=" + fileA), Getenv: envMap(nil)},
			check: func(t *testing.T, c Config) {
				if c.DebugConsole {
					t.Error("cmdline key applied despite config_file")
				}
				if !c.DevMode || c.ServerAddr != "unix:///run/from-file.sock" || c.LogLevel != slog.LevelError ||
					c.HotplugTimeout != 9*time.Second || c.ConfigFile != fileA {
					t.Errorf("file not applied: %+v", c)
				}
			},
			wantWarns: []string{"cmdline:agent.debug_console", "file:bogus"},
		},
		{
			name: "--config flag wins over cmdline config_file",
			opts: LoadOptions{CmdlinePath: cmdline("agent.config_file=" + fileA), ConfigFileFlag: fileB, Getenv: envMap(nil)},
			check: func(t *testing.T, c Config) {
				if !c.DebugConsole || c.DevMode || c.ConfigFile != fileB {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "--config flag does not read the cmdline",
			opts: LoadOptions{CmdlinePath: filepath.Join(dir, "no-such-cmdline"), ConfigFileFlag: fileB, Getenv: envMap(nil)},
			check: func(t *testing.T, c Config) {
				if !c.DebugConsole {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "env overrides cmdline",
			opts: LoadOptions{
				CmdlinePath: cmdline("agent.server_addr=vsock://-1:2000 agent.log=debug agent.trace"),
				Getenv: envMap(map[string]string{
					EnvServerAddr: "unix:///run/env.sock",
					EnvLogLevel:   "warn",
					EnvTracing:    "false",
					EnvPolicyFile: "/etc/env-policy.rego",
				}),
			},
			check: func(t *testing.T, c Config) {
				if c.ServerAddr != "unix:///run/env.sock" || c.LogLevel != slog.LevelWarn || c.LogLevelName != "warn" ||
					c.Trace || c.PolicyFile != "/etc/env-policy.rego" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "env overrides file",
			opts: LoadOptions{ConfigFileFlag: fileA, Getenv: envMap(map[string]string{EnvServerAddr: "vsock://3:1024", EnvTracing: "1"})},
			check: func(t *testing.T, c Config) {
				if c.ServerAddr != "vsock://3:1024" || !c.Trace || !c.DevMode {
					t.Errorf("got %+v", c)
				}
			},
			wantWarns: []string{"file:bogus"},
		},
		{
			name: "env overrides agent.config_file too",
			opts: LoadOptions{CmdlinePath: cmdline("agent.config_file=" + fileA), Getenv: envMap(map[string]string{EnvLogLevel: "trace"})},
			check: func(t *testing.T, c Config) {
				if c.LogLevel != LevelTrace || !c.DevMode {
					t.Errorf("got %+v", c)
				}
			},
			wantWarns: []string{"file:bogus"},
		},
		{
			name: "bad env log level and tracing are warnings",
			opts: LoadOptions{CmdlinePath: cmdline("agent.log=debug agent.trace"), Getenv: envMap(map[string]string{EnvLogLevel: "loud", EnvTracing: "maybe"})},
			check: func(t *testing.T, c Config) {
				if c.LogLevel != slog.LevelDebug || c.Trace {
					t.Errorf("got %+v (log level kept, tracing off as kata)", c)
				}
			},
			wantWarns: []string{"env:" + EnvLogLevel, "env:" + EnvTracing},
		},
		{
			name: "empty env values are unset",
			opts: LoadOptions{CmdlinePath: cmdline("agent.trace"), Getenv: envMap(map[string]string{EnvTracing: "", EnvServerAddr: ""})},
			check: func(t *testing.T, c Config) {
				if !c.Trace || c.ServerAddr != DefaultServerAddr {
					t.Errorf("got %+v", c)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, warns, err := Load(context.Background(), tc.opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tc.check(t, c)
			var keys []string
			for _, w := range warns {
				keys = append(keys, w.Source+":"+w.Key)
			}
			if strings.Join(keys, ",") != strings.Join(tc.wantWarns, ",") {
				t.Errorf("warnings = %q, want %q", keys, tc.wantWarns)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badFile := write("bad.toml", "hotplug_timeout = 0\n")
	tests := []struct {
		name   string
		opts   LoadOptions
		target error
		want   string
	}{
		{"missing cmdline", LoadOptions{CmdlinePath: filepath.Join(dir, "nope")}, os.ErrNotExist, "kernel command line"},
		{"bad cmdline value", LoadOptions{CmdlinePath: write("c1", "agent.log=loud")}, errdefs.ErrInvalidArgument, "agent.log"},
		{"missing config_file", LoadOptions{CmdlinePath: write("c2", "agent.config_file="+filepath.Join(dir, "missing.toml"))}, errdefs.ErrNotFound, "agent.config_file"},
		{"missing --config", LoadOptions{ConfigFileFlag: filepath.Join(dir, "missing.toml")}, errdefs.ErrNotFound, "--config"},
		{"file timeout 0 fails Validate", LoadOptions{ConfigFileFlag: badFile}, errdefs.ErrInvalidArgument, "hotplug_timeout"},
		{"bad env server addr", LoadOptions{CmdlinePath: write("c3", ""), Getenv: envMap(map[string]string{EnvServerAddr: "http://x"})}, errdefs.ErrInvalidArgument, "server_addr"},
		{"relative env policy file", LoadOptions{CmdlinePath: write("c4", ""), Getenv: envMap(map[string]string{EnvPolicyFile: "policy.rego"})}, errdefs.ErrInvalidArgument, "policy_file"},
		{"huge cmdline", LoadOptions{CmdlinePath: write("c5", strings.Repeat("a ", maxCmdlineSize))}, errdefs.ErrInvalidArgument, "larger"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Getenv == nil {
				tc.opts.Getenv = envMap(nil)
			}
			_, _, err := Load(context.Background(), tc.opts)
			if !errors.Is(err, tc.target) {
				t.Fatalf("err = %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Load(ctx, LoadOptions{Getenv: envMap(nil)}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

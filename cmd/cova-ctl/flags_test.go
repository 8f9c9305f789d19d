package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseCommandLine(t *testing.T) {
	noEnv := func(string) string { return "" }
	env := func(k string) string {
		if k == envAddr {
			return "vsock://3:1024"
		}
		return ""
	}
	tests := []struct {
		name     string
		args     []string
		getenv   func(string) string
		wantCmd  string
		wantAddr string
		wantTO   time.Duration
		want     options // compared field by field where set
		check    func(t *testing.T, o *options)
		usage    bool // want a usage error
		help     bool // want flag.ErrHelp
	}{
		{name: "defaults", args: []string{"check"}, getenv: noEnv, wantCmd: "check", wantAddr: defaultAddr, wantTO: defaultTimeout},
		{name: "env addr", args: []string{"version"}, getenv: env, wantCmd: "version", wantAddr: "vsock://3:1024", wantTO: defaultTimeout},
		{name: "flag beats env", args: []string{"--addr", "unix:///tmp/a.sock", "--timeout", "5s", "check"}, getenv: env, wantCmd: "check", wantAddr: "unix:///tmp/a.sock", wantTO: 5 * time.Second},
		{name: "single dash flags", args: []string{"-addr=tcp://127.0.0.1:1", "metrics"}, getenv: noEnv, wantCmd: "metrics", wantAddr: "tcp://127.0.0.1:1", wantTO: defaultTimeout},
		{name: "bad timeout", args: []string{"--timeout", "-1s", "check"}, getenv: noEnv, usage: true},
		{name: "timeout not a duration", args: []string{"--timeout", "soon", "check"}, getenv: noEnv, usage: true},
		{name: "no command", args: nil, getenv: noEnv, usage: true},
		{name: "unknown command", args: []string{"frobnicate"}, getenv: noEnv, usage: true},
		{name: "unknown global flag", args: []string{"--nope", "check"}, getenv: noEnv, usage: true},
		{name: "help", args: []string{"help"}, getenv: noEnv, help: true},
		{name: "help command", args: []string{"help", "run"}, getenv: noEnv, help: true, wantCmd: "run"},
		{name: "-h", args: []string{"-h"}, getenv: noEnv, help: true},
		{name: "command -h", args: []string{"start", "-h"}, getenv: noEnv, help: true, wantCmd: "start"},
		{name: "check takes no args", args: []string{"check", "extra"}, getenv: noEnv, usage: true},

		{name: "create-sandbox defaults", args: []string{"create-sandbox"}, getenv: noEnv, wantCmd: "create-sandbox",
			check: func(t *testing.T, o *options) {
				if o.id != "" || o.hostname != "cova" {
					t.Fatalf("id %q hostname %q", o.id, o.hostname)
				}
			}},
		{name: "create-sandbox flags", args: []string{"create-sandbox", "--id", "sb1", "--hostname", "h"}, getenv: noEnv, wantCmd: "create-sandbox", want: options{id: "sb1", hostname: "h"}},
		{name: "create-container", args: []string{"create-container", "--id", "c1", "--rootfs", "/r", "--tty", "--", "sh", "-c", "echo hi"}, getenv: noEnv, wantCmd: "create-container",
			want: options{id: "c1", rootfs: "/r", tty: true, args: []string{"sh", "-c", "echo hi"}}},
		{name: "create-container without --", args: []string{"create-container", "--id", "c1", "--rootfs", "/r", "ls", "-l"}, getenv: noEnv, wantCmd: "create-container",
			want: options{id: "c1", rootfs: "/r", args: []string{"ls", "-l"}}},
		{name: "create-container needs id", args: []string{"create-container", "--rootfs", "/r", "--", "sh"}, getenv: noEnv, usage: true},
		{name: "create-container needs rootfs", args: []string{"create-container", "--id", "c", "--", "sh"}, getenv: noEnv, usage: true},
		{name: "create-container needs cmd", args: []string{"create-container", "--id", "c", "--rootfs", "/r"}, getenv: noEnv, usage: true},
		{name: "start", args: []string{"start", "--id", "c1"}, getenv: noEnv, wantCmd: "start", want: options{id: "c1"}},
		{name: "start needs id", args: []string{"start"}, getenv: noEnv, usage: true},
		{name: "start unknown flag", args: []string{"start", "--id", "c", "--bogus"}, getenv: noEnv, usage: true},
		{name: "exec", args: []string{"exec", "--id", "c1", "--exec-id", "e1", "--tty", "--", "ps", "aux"}, getenv: noEnv, wantCmd: "exec",
			want: options{id: "c1", execID: "e1", tty: true, args: []string{"ps", "aux"}}},
		{name: "exec detach", args: []string{"exec", "--id", "c1", "--exec-id", "e1", "--detach", "--", "sleep", "9"}, getenv: noEnv, wantCmd: "exec",
			want: options{id: "c1", execID: "e1", detach: true, args: []string{"sleep", "9"}}},
		{name: "exec needs exec-id", args: []string{"exec", "--id", "c1", "--", "ps"}, getenv: noEnv, usage: true},
		{name: "wait", args: []string{"wait", "--id", "c1"}, getenv: noEnv, wantCmd: "wait", want: options{id: "c1"}},
		{name: "wait exec", args: []string{"wait", "--id", "c1", "--exec-id", "e1"}, getenv: noEnv, wantCmd: "wait", want: options{id: "c1", execID: "e1"}},
		{name: "signal number", args: []string{"signal", "--id", "c1", "--signal", "9"}, getenv: noEnv, wantCmd: "signal", want: options{id: "c1", signal: "9", signalNum: 9}},
		{name: "signal name", args: []string{"signal", "--id", "c1", "--exec-id", "e", "--signal", "TERM"}, getenv: noEnv, wantCmd: "signal", want: options{id: "c1", execID: "e", signal: "TERM", signalNum: 15}},
		{name: "signal missing", args: []string{"signal", "--id", "c1"}, getenv: noEnv, usage: true},
		{name: "signal bad", args: []string{"signal", "--id", "c1", "--signal", "SIGNOPE"}, getenv: noEnv, usage: true},
		{name: "signal zero", args: []string{"signal", "--id", "c1", "--signal", "0"}, getenv: noEnv, usage: true},
		{name: "remove", args: []string{"remove", "--id", "c1", "--timeout", "30"}, getenv: noEnv, wantCmd: "remove", want: options{id: "c1", removeTimeout: 30}},
		{name: "remove default timeout", args: []string{"remove", "--id", "c1"}, getenv: noEnv, wantCmd: "remove", want: options{id: "c1"}},
		{name: "remove negative timeout", args: []string{"remove", "--id", "c1", "--timeout", "-3"}, getenv: noEnv, usage: true},
		{name: "stats", args: []string{"stats", "--id", "c1"}, getenv: noEnv, wantCmd: "stats", want: options{id: "c1"}},
		{name: "pause", args: []string{"pause", "--id", "c1"}, getenv: noEnv, wantCmd: "pause", want: options{id: "c1"}},
		{name: "resume", args: []string{"resume", "--id", "c1"}, getenv: noEnv, wantCmd: "resume", want: options{id: "c1"}},
		{name: "resume needs id", args: []string{"resume"}, getenv: noEnv, usage: true},
		{name: "list-interfaces", args: []string{"list-interfaces"}, getenv: noEnv, wantCmd: "list-interfaces"},
		{name: "list-routes", args: []string{"list-routes"}, getenv: noEnv, wantCmd: "list-routes"},
		{name: "oom-event", args: []string{"oom-event"}, getenv: noEnv, wantCmd: "oom-event"},
		{name: "guest-details", args: []string{"guest-details"}, getenv: noEnv, wantCmd: "guest-details"},
		{name: "destroy-sandbox", args: []string{"destroy-sandbox"}, getenv: noEnv, wantCmd: "destroy-sandbox"},
		{name: "set-time", args: []string{"set-time"}, getenv: noEnv, wantCmd: "set-time"},
		{name: "copy-file", args: []string{"copy-file", "a", "/run/kata-containers/shared/containers/a"}, getenv: noEnv, wantCmd: "copy-file",
			want: options{args: []string{"a", "/run/kata-containers/shared/containers/a"}}},
		{name: "copy-file owner", args: []string{"copy-file", "--uid", "1000", "--gid", "5", "a", "b"}, getenv: noEnv, wantCmd: "copy-file",
			want: options{uid: 1000, gid: 5, args: []string{"a", "b"}}},
		{name: "copy-file one arg", args: []string{"copy-file", "a"}, getenv: noEnv, usage: true},
		{name: "copy-file negative uid", args: []string{"copy-file", "--uid", "-1", "a", "b"}, getenv: noEnv, usage: true},
		{name: "run", args: []string{"run", "--rootfs", "/r", "--", "echo", "hi"}, getenv: noEnv, wantCmd: "run",
			want: options{rootfs: "/r", guestRoot: "/run/kata-containers", args: []string{"echo", "hi"}}},
		{name: "run tty id", args: []string{"run", "--rootfs", "/r", "--tty", "--id", "c9", "--", "sh"}, getenv: noEnv, wantCmd: "run",
			want: options{rootfs: "/r", guestRoot: "/run/kata-containers", tty: true, id: "c9", args: []string{"sh"}}},
		{name: "run image", args: []string{"run", "--image", "127.0.0.1:5000/x:1", "--guest-root", "/g", "--", "sh"}, getenv: noEnv, wantCmd: "run",
			want: options{image: "127.0.0.1:5000/x:1", guestRoot: "/g", args: []string{"sh"}}},
		{name: "run image and rootfs", args: []string{"run", "--image", "x", "--rootfs", "/r", "--", "sh"}, getenv: noEnv, usage: true},
		{name: "run needs rootfs", args: []string{"run", "--", "sh"}, getenv: noEnv, usage: true},
		{name: "run needs cmd", args: []string{"run", "--rootfs", "/r"}, getenv: noEnv, usage: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := parseCommandLine(tt.args, tt.getenv)
			switch {
			case tt.help:
				if !errors.Is(err, flag.ErrHelp) {
					t.Fatalf("err = %v, want flag.ErrHelp", err)
				}
				if tt.wantCmd != "" && (inv == nil || inv.cmd == nil || inv.cmd.name != tt.wantCmd) {
					t.Fatalf("help for %+v, want %s", inv, tt.wantCmd)
				}
				return
			case tt.usage:
				var ue *usageError
				if !errors.As(err, &ue) {
					t.Fatalf("err = %v, want a usage error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseCommandLine(%q): %v", tt.args, err)
			}
			if inv.cmd.name != tt.wantCmd {
				t.Fatalf("command = %s, want %s", inv.cmd.name, tt.wantCmd)
			}
			if tt.wantAddr != "" && inv.addr != tt.wantAddr {
				t.Fatalf("addr = %s, want %s", inv.addr, tt.wantAddr)
			}
			if tt.wantTO != 0 && inv.timeout != tt.wantTO {
				t.Fatalf("timeout = %v, want %v", inv.timeout, tt.wantTO)
			}
			if tt.check != nil {
				tt.check(t, inv.opts)
				return
			}
			got := *inv.opts
			if tt.want.hostname == "" {
				got.hostname = "" // create-sandbox's default is checked above
			}
			if len(got.args) == 0 {
				got.args = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("options = %+v\nwant      %+v", got, tt.want)
			}
		})
	}
}

func TestEveryCommandHasUsage(t *testing.T) {
	text := usageText()
	seen := map[string]bool{}
	for _, c := range commands {
		if seen[c.name] {
			t.Fatalf("command %s listed twice", c.name)
		}
		seen[c.name] = true
		if c.run == nil || c.help == "" {
			t.Fatalf("command %s lacks run or help", c.name)
		}
		if !strings.Contains(text, "\n  "+c.synopsis()+"\n") {
			t.Fatalf("usage text lacks %q", c.synopsis())
		}
		if !strings.HasPrefix(c.usage(), "cova-ctl "+c.name) {
			t.Fatalf("usage of %s = %q", c.name, c.usage())
		}
	}
	for _, want := range []string{"check", "version", "guest-details", "create-sandbox", "destroy-sandbox",
		"create-container", "start", "exec", "wait", "signal", "remove", "stats", "pause", "resume",
		"list-interfaces", "list-routes", "metrics", "oom-event", "copy-file", "set-time", "run"} {
		if !seen[want] {
			t.Errorf("command %s missing", want)
		}
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
		bad  bool
	}{
		{in: "15", want: 15},
		{in: "9", want: 9},
		{in: "KILL", want: 9},
		{in: "SIGHUP", want: 1},
		{in: "sigint", want: 2},
		{in: "usr1", want: 10},
		{in: "0", bad: true},
		{in: "65", bad: true},
		{in: "SIGFOO", bad: true},
		{in: "-9", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSignal(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("parseSignal(%q) = %d, want error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseSignal(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestBuildSpec(t *testing.T) {
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		rootfs   string
		args     []string
		tty      bool
		wantRoot string
	}{
		{name: "absolute", rootfs: "/run/cova/rootfs", args: []string{"/bin/echo", "hi"}, wantRoot: "/run/cova/rootfs"},
		{name: "relative is made absolute", rootfs: "rootfs", args: []string{"sh"}, tty: true, wantRoot: filepath.Join(cwd, "rootfs")},
		{name: "cleaned", rootfs: "/a/../b/", args: []string{"true"}, wantRoot: "/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := buildSpec(tt.rootfs, tt.args, tt.tty)
			if err != nil {
				t.Fatal(err)
			}
			if s.Root.Path != tt.wantRoot {
				t.Fatalf("root = %q, want %q", s.Root.Path, tt.wantRoot)
			}
			if !slices.Equal(s.Process.Args, tt.args) || s.Process.Terminal != tt.tty {
				t.Fatalf("process args %q terminal %v", s.Process.Args, s.Process.Terminal)
			}
			if s.Hostname != containerHostname {
				t.Fatalf("hostname %q", s.Hostname)
			}
			var types []specs.LinuxNamespaceType
			for _, n := range s.Linux.Namespaces {
				types = append(types, n.Type)
			}
			if slices.Contains(types, specs.NetworkNamespace) {
				t.Fatalf("spec keeps a network namespace: %v", types)
			}
			for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace} {
				if !slices.Contains(types, want) {
					t.Fatalf("namespace %s missing: %v", want, types)
				}
			}
			// The example spec must survive the wire conversion.
			w, err := toWireSpec(s)
			if err != nil {
				t.Fatalf("toWireSpec: %v", err)
			}
			if w.Root.GetPath() != tt.wantRoot || !slices.Equal(w.Process.GetArgs(), tt.args) || w.Process.GetTerminal() != tt.tty {
				t.Fatalf("wire spec root %q args %q terminal %v", w.Root.GetPath(), w.Process.GetArgs(), w.Process.GetTerminal())
			}
			if len(w.Mounts) != len(s.Mounts) || w.Linux == nil || len(w.Linux.Namespaces) != len(s.Linux.Namespaces) {
				t.Fatalf("wire spec lost mounts or namespaces")
			}
		})
	}
	if _, err := buildSpec("/r", nil, false); err == nil {
		t.Fatal("buildSpec with no command succeeded")
	}
	p, err := buildProcess([]string{"ps"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Args, []string{"ps"}) || !p.Terminal || p.Cwd != "/" {
		t.Fatalf("exec process = %v", p)
	}
}

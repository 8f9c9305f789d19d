package main

import (
	"fmt"
	"path/filepath"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/protocols/grpc"
)

// containerHostname is the host name of run's sandbox and containers.
const containerHostname = "cova"

// defaultCaps is runc's default capability set (what `runc spec` writes).
var defaultCaps = []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}

// exampleSpec is what `runc spec` writes (runc 1.x defaults), built here so
// the CLI needs no libcontainer (and no cgo).
func exampleSpec() *specs.Spec {
	caps := func() []string { return append([]string(nil), defaultCaps...) }
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			User: specs.User{},
			Args: []string{"sh"},
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps(), Permitted: caps(), Effective: caps(),
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "runc",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources:     &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
		},
	}
}

// buildSpec makes the runtime spec of run and create-container: runc's
// example spec (`runc spec`) with the root at the absolute rootfs, args as
// the process and no network namespace, since the agent owns the sandbox's
// network. rootfs is a guest path; it is only made absolute here.
func buildSpec(rootfs string, args []string, tty bool) (*specs.Spec, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("building spec: empty command")
	}
	root, err := filepath.Abs(rootfs)
	if err != nil {
		return nil, fmt.Errorf("building spec: rootfs %q: %w", rootfs, err)
	}
	s := exampleSpec()
	s.Root.Path = root
	s.Hostname = containerHostname
	s.Process.Args = append([]string(nil), args...)
	s.Process.Terminal = tty
	ns := s.Linux.Namespaces[:0]
	for _, n := range s.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	return s, nil
}

// buildProcess makes the process of exec: the example spec's process (user
// 0, default PATH, cwd /, runc's default capabilities) running args.
func buildProcess(args []string, tty bool) (*grpc.Process, error) {
	s, err := buildSpec("/", args, tty)
	if err != nil {
		return nil, err
	}
	p, err := ocispec.FromProcess(s.Process)
	if err != nil {
		return nil, fmt.Errorf("converting process: %w", err)
	}
	return p, nil
}

// toWireSpec converts a runtime spec to the CreateContainer message.
func toWireSpec(s *specs.Spec) (*grpc.Spec, error) {
	w, err := ocispec.FromSpec(s)
	if err != nil {
		return nil, fmt.Errorf("converting spec: %w", err)
	}
	return w, nil
}

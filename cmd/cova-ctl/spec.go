package main

import (
	"fmt"
	"path/filepath"

	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/protocols/grpc"
)

// containerHostname is the host name of run's sandbox and containers.
const containerHostname = "cova"

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
	s := specconv.Example()
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

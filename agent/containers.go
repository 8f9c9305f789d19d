package agent

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/ocispec"
	pb "github.com/cova-project/cova/protocols/grpc"
)

func (a *Agent) createContainer(ctx context.Context, r *pb.CreateContainerRequest) (retErr error) {
	if !container.ValidID(r.ContainerId) {
		return invalid("container_id", "%q is not a valid id", r.ContainerId)
	}
	if r.ExecId != "" && r.ExecId != r.ContainerId {
		return invalid("exec_id", "must be empty or equal to container_id")
	}
	if r.StringUser != nil {
		return invalid("string_user", "user names are not supported; send numeric ids in OCI.Process.User")
	}
	if len(r.SharedMounts) > 0 {
		return invalid("shared_mounts", "not supported")
	}
	if r.OCI == nil {
		return invalid("OCI", "is null")
	}
	sb, err := a.currentSandbox()
	if err != nil {
		return err
	}
	if err := a.ready(ctx); err != nil {
		return err
	}
	spec, err := ocispec.ToSpec(r.OCI)
	if err != nil {
		return err
	}
	if err := a.checkSpec(spec); err != nil {
		return err
	}
	if err := a.checkMounts(spec, r.Storages); err != nil {
		return err
	}
	if err := checkGuestPullSource(spec, r.Storages); err != nil {
		return err
	}
	// Digest the env before unsealing: the measurement must not carry a
	// digest of a secret's plaintext (the event log is evidence others see).
	sentEnv := envDigests(spec.Process.Env)
	if err := a.unsealEnv(ctx, "OCI.Process.Env", spec.Process.Env); err != nil {
		return err
	}
	if err := a.unsealMounts(ctx, spec); err != nil {
		return err
	}
	isPause := r.ContainerId == sb.id
	if err := a.setNamespaces(sb, spec, isPause, r.SandboxPidns); err != nil {
		return err
	}
	if err := a.setCgroupsPath(sb, r.ContainerId, spec); err != nil {
		return err
	}

	// The trusted image store first: pulls must land on it.
	if err := a.addDevices(ctx, sb, r.Devices, spec, true); err != nil {
		return err
	}
	// Storages next: the rootfs may be one of them.
	var mounted []string
	defer func() {
		if retErr != nil {
			for i := len(mounted) - 1; i >= 0; i-- {
				_ = a.opts.Storage.Remove(context.WithoutCancel(ctx), mounted[i])
			}
		}
	}()
	for i, s := range r.Storages {
		if s == nil {
			return invalid(fmt.Sprintf("storages[%d]", i), "is null")
		}
		mp, err := a.opts.Storage.Add(ctx, r.ContainerId, storageFromPB(s))
		if err != nil {
			return fmt.Errorf("storages[%d]: %w", i, err)
		}
		mounted = append(mounted, mp)
	}
	if err := a.addDevices(ctx, sb, r.Devices, spec, false); err != nil {
		return err
	}

	c, err := a.opts.Containers.Create(ctx, container.CreateOptions{ID: r.ContainerId, Spec: spec})
	if err != nil {
		return err
	}
	a.mu.Lock()
	if a.sandbox == sb {
		sb.ctrStorage[r.ContainerId] = mounted
		a.createdEnv.Store(r.ContainerId, sentEnv)
		if isPause && sb.pidns {
			sb.pausePidNS = fmt.Sprintf("/proc/%d/ns/pid", c.Init().Pid)
		}
	}
	a.mu.Unlock()
	return nil
}

// checkSpec validates the parts of the spec the agent relies on.
func (a *Agent) checkSpec(s *specs.Spec) error {
	if s.Process == nil {
		return invalid("OCI.Process", "is null")
	}
	if len(s.Process.Args) == 0 {
		return invalid("OCI.Process.Args", "is empty")
	}
	if s.Root == nil || s.Root.Path == "" {
		return invalid("OCI.Root.Path", "is empty")
	}
	p := s.Root.Path
	if !filepath.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) {
		return invalid("OCI.Root.Path", "%q must be an absolute clean path", p)
	}
	if len(a.opts.RootfsPrefixes) > 0 {
		ok := false
		for _, pre := range a.opts.RootfsPrefixes {
			if strings.HasPrefix(p, strings.TrimSuffix(pre, "/")+"/") {
				ok = true
			}
		}
		if !ok {
			return invalid("OCI.Root.Path", "%q is outside the allowed roots %v", p, a.opts.RootfsPrefixes)
		}
	}
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Hooks != nil && hookCount(s.Hooks) > 0 {
		return invalid("OCI.Hooks", "OCI hooks run programs chosen by the host and are not supported")
	}
	return nil
}

func hookCount(h *specs.Hooks) int {
	//lint:ignore SA1019 shims still send Prestart hooks; they must be refused too
	n := len(h.Prestart)
	return n + len(h.CreateRuntime) + len(h.CreateContainer) + len(h.StartContainer) + len(h.Poststart) + len(h.Poststop)
}

// setNamespaces applies the sandbox's namespace layout (as kata does): shared
// IPC and UTS, the pause container's PID namespace when asked, the guest's
// network namespace. Paths from the host are refused: it must not make a
// container join a namespace of its choosing.
func (a *Agent) setNamespaces(sb *sandbox, s *specs.Spec, isPause, wantPidns bool) error {
	var out []specs.LinuxNamespace
	seen := map[specs.LinuxNamespaceType]bool{}
	for i, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			return invalid(fmt.Sprintf("OCI.Linux.Namespaces[%d].Path", i), "namespace paths are chosen by the agent, not the host")
		}
		if seen[ns.Type] {
			return invalid(fmt.Sprintf("OCI.Linux.Namespaces[%d].Type", i), "duplicate namespace %q", ns.Type)
		}
		seen[ns.Type] = true
		switch ns.Type {
		case specs.NetworkNamespace, specs.PIDNamespace:
			continue // the guest network namespace is the sandbox's; pid decided below
		case specs.IPCNamespace:
			ns.Path = sb.ns.ipcPath()
		case specs.UTSNamespace:
			ns.Path = sb.ns.utsPath()
		case specs.MountNamespace, specs.CgroupNamespace, specs.UserNamespace, specs.TimeNamespace:
		default:
			return invalid(fmt.Sprintf("OCI.Linux.Namespaces[%d].Type", i), "unknown namespace %q", ns.Type)
		}
		out = append(out, ns)
	}
	if !seen[specs.MountNamespace] {
		out = append(out, specs.LinuxNamespace{Type: specs.MountNamespace})
	}
	if !seen[specs.IPCNamespace] {
		out = append(out, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: sb.ns.ipcPath()})
	}
	if !seen[specs.UTSNamespace] {
		out = append(out, specs.LinuxNamespace{Type: specs.UTSNamespace, Path: sb.ns.utsPath()})
	}
	pid := specs.LinuxNamespace{Type: specs.PIDNamespace}
	if (wantPidns || sb.pidns) && !isPause {
		a.mu.Lock()
		p := sb.pausePidNS
		a.mu.Unlock()
		if p == "" {
			return fmt.Errorf("sandbox pid namespace requested but the pause container does not exist: %w", errdefs.ErrFailedPrecondition)
		}
		pid.Path = p
	}
	s.Linux.Namespaces = append(out, pid)
	return nil
}

func (a *Agent) setCgroupsPath(sb *sandbox, id string, s *specs.Spec) error {
	p := s.Linux.CgroupsPath
	if strings.ContainsRune(p, 0) || strings.Contains(p, "..") || len(p) > 4096 {
		return invalid("OCI.Linux.CgroupsPath", "%q is not acceptable", p)
	}
	if strings.Contains(p, ":") {
		// systemd-style "slice:prefix:name" from the host: the guest has no systemd.
		p = ""
	}
	if p == "" {
		sbid := sb.id
		if sbid == "" {
			sbid = "sandbox"
		}
		p = "/kata/" + sbid + "/" + id
	}
	if a.opts.CgroupParent != "" {
		p = strings.TrimSuffix(a.opts.CgroupParent, "/") + "/" + strings.TrimPrefix(path.Clean(p), "/")
	}
	s.Linux.CgroupsPath = p
	return nil
}

// addDevices resolves hot-plugged block devices and points the spec's
// matching device entries at them.
// TrustedStoreDevice is the container path by which Kata's runtime offers
// the encrypted image store device.
const TrustedStoreDevice = "/dev/trusted_store"

// addDevices resolves the request's devices and points the spec's device
// entries at them; with trustedOnly it handles only the trusted image store
// device (which must be in place before any storage pulls an image).
func (a *Agent) addDevices(ctx context.Context, sb *sandbox, devs []*pb.Device, s *specs.Spec, trustedOnly bool) error {
	for i, d := range devs {
		if d != nil && trustedOnly != (d.ContainerPath == TrustedStoreDevice) {
			continue // each pass handles its own devices
		}
		field := fmt.Sprintf("devices[%d]", i)
		if d == nil {
			return invalid(field, "is null")
		}
		var driver string
		switch d.Type {
		case "blk":
			driver = "blk"
		case "scsi":
			driver = "scsi"
		default:
			return invalid(field+".type", "device type %q is not supported", d.Type)
		}
		node, err := a.opts.Storage.ResolveDevice(ctx, driver, d.Id)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		if d.ContainerPath == "" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(node, &st); err != nil {
			return fmt.Errorf("%s: stat %s: %w", field, node, err)
		}
		if d.ContainerPath == TrustedStoreDevice {
			if err := a.trustedStore(ctx, sb, field, uint32(unix.Major(st.Rdev)), uint32(unix.Minor(st.Rdev))); err != nil {
				return err
			}
			// The raw (encrypted) disk is the guest's, not the container's.
			s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(dv specs.LinuxDevice) bool { return dv.Path == TrustedStoreDevice })
			continue
		}
		found := false
		for j := range s.Linux.Devices {
			if s.Linux.Devices[j].Path == d.ContainerPath {
				s.Linux.Devices[j].Major = int64(unix.Major(st.Rdev))
				s.Linux.Devices[j].Minor = int64(unix.Minor(st.Rdev))
				found = true
			}
		}
		if !found {
			return invalid(field+".container_path", "%q matches no OCI.Linux.Devices entry", d.ContainerPath)
		}
	}
	return nil
}

func (a *Agent) removeContainer(ctx context.Context, r *pb.RemoveContainerRequest) error {
	timeout := time.Duration(r.Timeout) * time.Second
	if r.Timeout > uint32(24*time.Hour/time.Second) {
		return invalid("timeout", "%d s is too long", r.Timeout)
	}
	if err := a.opts.Containers.Remove(ctx, r.ContainerId, timeout); err != nil {
		return err
	}
	a.createdEnv.Delete(r.ContainerId)
	a.mu.Lock()
	var mps []string
	if a.sandbox != nil {
		mps = a.sandbox.ctrStorage[r.ContainerId]
		delete(a.sandbox.ctrStorage, r.ContainerId)
	}
	a.mu.Unlock()
	for i := len(mps) - 1; i >= 0; i-- {
		if err := a.opts.Storage.Remove(ctx, mps[i]); err != nil {
			return fmt.Errorf("unmount storage of %s: %w", r.ContainerId, err)
		}
	}
	return nil
}

// trustedStore moves the image store onto the trusted device once per
// sandbox (Kata offers it with every container that needs it).
func (a *Agent) trustedStore(ctx context.Context, sb *sandbox, field string, major, minor uint32) error {
	if a.opts.TrustedStore == nil {
		return fmt.Errorf("%s: %s needs the secure mount of the confidential data hub: %w", field, TrustedStoreDevice, errdefs.ErrNotImplemented)
	}
	sb.trustedStore.Lock()
	defer sb.trustedStore.Unlock()
	if sb.trustedDone {
		return nil
	}
	if err := a.opts.TrustedStore(ctx, major, minor); err != nil {
		return fmt.Errorf("%s: image store on %s (%d:%d): %w", field, TrustedStoreDevice, major, minor, err)
	}
	sb.trustedDone = true
	a.log.InfoContext(ctx, "image store moved onto the trusted device", "device", fmt.Sprintf("%d:%d", major, minor))
	return nil
}

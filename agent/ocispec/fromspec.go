package ocispec

import (
	"math"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/protocols/grpc"
)

// defaultDeviceMode is the mode runc gives a device with no fileMode. The
// wire cannot say "unset" (ToSpec reads 0 as mode 0), so FromSpec sends it.
const defaultDeviceMode = 0o666

// FromSpec converts a runtime-spec spec into the message of a
// CreateContainerRequest. A field the proto cannot carry is an error
// wrapping errdefs.ErrNotImplemented, and a value the wire would change
// (see the package documentation) one wrapping errdefs.ErrInvalidArgument;
// both name the config.json path ("linux.resources.unified").
func FromSpec(s *specs.Spec) (*grpc.Spec, error) {
	if s == nil {
		return nil, invalid("spec", "missing")
	}
	return fromSpec(s)
}

// FromProcess converts a runtime-spec process (as `runc exec --process`
// reads it) into the message of an ExecProcessRequest; errors name the field
// as "process.…".
func FromProcess(p *specs.Process) (*grpc.Process, error) {
	if p == nil {
		return nil, invalid("process", "missing")
	}
	out, err := fromProcess(p)
	return out, under("process", err)
}

// FromResources converts runtime-spec resources (as `runc update --resources`
// reads them) into the message of an UpdateContainerRequest; errors name the
// field as "resources.…".
func FromResources(r *specs.LinuxResources) (*grpc.LinuxResources, error) {
	if r == nil {
		return nil, invalid("resources", "missing")
	}
	out, err := fromResources(r)
	return out, under("resources", err)
}

func fromSpec(s *specs.Spec) (*grpc.Spec, error) {
	switch {
	case s.Domainname != "":
		return nil, unsupported("domainname")
	case s.Solaris != nil:
		return nil, unsupported("solaris")
	case s.Windows != nil:
		return nil, unsupported("windows")
	case s.VM != nil:
		return nil, unsupported("vm")
	case s.ZOS != nil:
		return nil, unsupported("zos")
	case s.FreeBSD != nil:
		return nil, unsupported("freebsd")
	}
	out := &grpc.Spec{
		Version:     s.Version,
		Hostname:    s.Hostname,
		Annotations: cloneMap(s.Annotations),
	}
	var err error
	if s.Process != nil {
		if out.Process, err = fromProcess(s.Process); err != nil {
			return nil, under("process", err)
		}
	}
	if s.Root != nil {
		out.Root = &grpc.Root{Path: s.Root.Path, Readonly: s.Root.Readonly}
	}
	if len(s.Mounts) > 0 {
		out.Mounts = make([]*grpc.Mount, len(s.Mounts))
		for i, m := range s.Mounts {
			switch {
			case m.UIDMappings != nil:
				return nil, unsupported(index("mounts", i) + ".uidMappings")
			case m.GIDMappings != nil:
				return nil, unsupported(index("mounts", i) + ".gidMappings")
			}
			out.Mounts[i] = &grpc.Mount{
				Destination: m.Destination,
				Source:      m.Source,
				Type:        m.Type,
				Options:     cloneSlice(m.Options),
			}
		}
	}
	if s.Hooks != nil {
		if out.Hooks, err = fromHooks(s.Hooks); err != nil {
			return nil, under("hooks", err)
		}
	}
	if s.Linux != nil {
		if out.Linux, err = fromLinux(s.Linux); err != nil {
			return nil, under("linux", err)
		}
	}
	return out, nil
}

func fromProcess(p *specs.Process) (*grpc.Process, error) {
	switch {
	case p.CommandLine != "":
		return nil, unsupported("commandLine")
	case p.Scheduler != nil:
		return nil, unsupported("scheduler")
	case p.IOPriority != nil:
		return nil, unsupported("ioPriority")
	case p.ExecCPUAffinity != nil:
		return nil, unsupported("execCPUAffinity")
	case p.User.Umask != nil:
		return nil, unsupported("user.umask")
	}
	out := &grpc.Process{
		Terminal: p.Terminal,
		User: &grpc.User{
			UID:            p.User.UID,
			GID:            p.User.GID,
			AdditionalGids: cloneSlice(p.User.AdditionalGids),
			Username:       p.User.Username,
		},
		Args:            cloneSlice(p.Args),
		Env:             cloneSlice(p.Env),
		Cwd:             p.Cwd,
		NoNewPrivileges: p.NoNewPrivileges,
		ApparmorProfile: p.ApparmorProfile,
		SelinuxLabel:    p.SelinuxLabel,
	}
	if b := p.ConsoleSize; b != nil {
		if uint64(b.Height) > math.MaxUint32 {
			return nil, invalid("consoleSize.height", "%d exceeds %d", b.Height, uint32(math.MaxUint32))
		}
		if uint64(b.Width) > math.MaxUint32 {
			return nil, invalid("consoleSize.width", "%d exceeds %d", b.Width, uint32(math.MaxUint32))
		}
		out.ConsoleSize = &grpc.Box{Height: uint32(b.Height), Width: uint32(b.Width)}
	}
	if c := p.Capabilities; c != nil {
		out.Capabilities = &grpc.LinuxCapabilities{
			Bounding:    cloneSlice(c.Bounding),
			Effective:   cloneSlice(c.Effective),
			Inheritable: cloneSlice(c.Inheritable),
			Permitted:   cloneSlice(c.Permitted),
			Ambient:     cloneSlice(c.Ambient),
		}
	}
	if len(p.Rlimits) > 0 {
		out.Rlimits = make([]*grpc.POSIXRlimit, len(p.Rlimits))
		for i, r := range p.Rlimits {
			out.Rlimits[i] = &grpc.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft}
		}
	}
	if p.OOMScoreAdj != nil {
		if *p.OOMScoreAdj == 0 {
			return nil, zeroIsUnset("oomScoreAdj")
		}
		out.OOMScoreAdj = int64(*p.OOMScoreAdj)
	}
	return out, nil
}

// zeroIsUnset reports a set zero that the wire would turn into "unset" while
// libcontainer gives the two different meanings.
func zeroIsUnset(field string) error {
	return invalid(field, "0 cannot be sent: the agent API reads 0 as unset")
}

func fromHooks(h *specs.Hooks) (*grpc.Hooks, error) {
	out := &grpc.Hooks{}
	lists := []struct {
		name string
		in   []specs.Hook
		out  *[]*grpc.Hook
	}{
		//lint:ignore SA1019 the wire still carries prestart hooks; carry them.
		{"prestart", h.Prestart, &out.Prestart},
		{"poststart", h.Poststart, &out.Poststart},
		{"poststop", h.Poststop, &out.Poststop},
		{"createRuntime", h.CreateRuntime, &out.CreateRuntime},
		{"createContainer", h.CreateContainer, &out.CreateContainer},
		{"startContainer", h.StartContainer, &out.StartContainer},
	}
	for _, l := range lists {
		if len(l.in) == 0 {
			continue
		}
		hooks := make([]*grpc.Hook, len(l.in))
		for i, hk := range l.in {
			hooks[i] = &grpc.Hook{Path: hk.Path, Args: cloneSlice(hk.Args), Env: cloneSlice(hk.Env)}
			if hk.Timeout != nil {
				if *hk.Timeout == 0 {
					return nil, zeroIsUnset(index(l.name, i) + ".timeout")
				}
				hooks[i].Timeout = int64(*hk.Timeout)
			}
		}
		*l.out = hooks
	}
	return out, nil
}

func fromLinux(l *specs.Linux) (*grpc.Linux, error) {
	switch {
	case l.NetDevices != nil:
		return nil, unsupported("netDevices")
	case l.MemoryPolicy != nil:
		return nil, unsupported("memoryPolicy")
	case l.Personality != nil:
		return nil, unsupported("personality")
	case l.TimeOffsets != nil:
		return nil, unsupported("timeOffsets")
	}
	out := &grpc.Linux{
		UIDMappings:       fromIDMappings(l.UIDMappings),
		GIDMappings:       fromIDMappings(l.GIDMappings),
		Sysctl:            cloneMap(l.Sysctl),
		CgroupsPath:       l.CgroupsPath,
		RootfsPropagation: l.RootfsPropagation,
		MaskedPaths:       cloneSlice(l.MaskedPaths),
		ReadonlyPaths:     cloneSlice(l.ReadonlyPaths),
		MountLabel:        l.MountLabel,
	}
	var err error
	if l.Resources != nil {
		if out.Resources, err = fromResources(l.Resources); err != nil {
			return nil, under("resources", err)
		}
	}
	if len(l.Namespaces) > 0 {
		out.Namespaces = make([]*grpc.LinuxNamespace, len(l.Namespaces))
		for i, ns := range l.Namespaces {
			out.Namespaces[i] = &grpc.LinuxNamespace{Type: string(ns.Type), Path: ns.Path}
		}
	}
	if len(l.Devices) > 0 {
		out.Devices = make([]*grpc.LinuxDevice, len(l.Devices))
		for i, d := range l.Devices {
			dev := &grpc.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor, FileMode: defaultDeviceMode}
			if d.FileMode != nil {
				dev.FileMode = uint32(*d.FileMode)
			}
			if d.UID != nil {
				dev.UID = *d.UID
			}
			if d.GID != nil {
				dev.GID = *d.GID
			}
			out.Devices[i] = dev
		}
	}
	if l.Seccomp != nil {
		if out.Seccomp, err = fromSeccomp(l.Seccomp); err != nil {
			return nil, under("seccomp", err)
		}
	}
	if r := l.IntelRdt; r != nil {
		switch {
		case r.ClosID != "":
			return nil, unsupported("intelRdt.closID")
		case r.Schemata != nil:
			return nil, unsupported("intelRdt.schemata")
		case r.MemBwSchema != "":
			return nil, unsupported("intelRdt.memBwSchema")
		case r.EnableMonitoring:
			return nil, unsupported("intelRdt.enableMonitoring")
		}
		out.IntelRdt = &grpc.LinuxIntelRdt{L3CacheSchema: r.L3CacheSchema}
	}
	return out, nil
}

func fromIDMappings(in []specs.LinuxIDMapping) []*grpc.LinuxIDMapping {
	if len(in) == 0 {
		return nil
	}
	out := make([]*grpc.LinuxIDMapping, len(in))
	for i, m := range in {
		out[i] = &grpc.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size}
	}
	return out
}

func fromResources(r *specs.LinuxResources) (*grpc.LinuxResources, error) {
	switch {
	case r.Rdma != nil:
		return nil, unsupported("rdma")
	case r.Unified != nil:
		return nil, unsupported("unified")
	}
	out := &grpc.LinuxResources{}
	if len(r.Devices) > 0 {
		out.Devices = make([]*grpc.LinuxDeviceCgroup, len(r.Devices))
		for i, d := range r.Devices {
			dev := &grpc.LinuxDeviceCgroup{Allow: d.Allow, Type: d.Type, Access: d.Access}
			if d.Major != nil {
				if *d.Major == 0 {
					return nil, zeroIsUnset(index("devices", i) + ".major")
				}
				dev.Major = *d.Major
			}
			if d.Minor != nil {
				if *d.Minor == 0 {
					return nil, zeroIsUnset(index("devices", i) + ".minor")
				}
				dev.Minor = *d.Minor
			}
			out.Devices[i] = dev
		}
	}
	if m := r.Memory; m != nil {
		switch {
		case m.UseHierarchy != nil:
			return nil, unsupported("memory.useHierarchy")
		case m.CheckBeforeUpdate != nil:
			return nil, unsupported("memory.checkBeforeUpdate")
		case m.Swappiness != nil && *m.Swappiness == 0:
			return nil, zeroIsUnset("memory.swappiness")
		}
		out.Memory = &grpc.LinuxMemory{
			Limit:       deref(m.Limit),
			Reservation: deref(m.Reservation),
			Swap:        deref(m.Swap),
			//lint:ignore SA1019 the wire carries kernel memory; carry it.
			Kernel:           deref(m.Kernel),
			KernelTCP:        deref(m.KernelTCP),
			Swappiness:       deref(m.Swappiness),
			DisableOOMKiller: deref(m.DisableOOMKiller),
		}
	}
	if c := r.CPU; c != nil {
		switch {
		case c.Burst != nil:
			return nil, unsupported("cpu.burst")
		case c.Idle != nil:
			return nil, unsupported("cpu.idle")
		}
		out.CPU = &grpc.LinuxCPU{
			Shares:          deref(c.Shares),
			Quota:           deref(c.Quota),
			Period:          deref(c.Period),
			RealtimeRuntime: deref(c.RealtimeRuntime),
			RealtimePeriod:  deref(c.RealtimePeriod),
			Cpus:            c.Cpus,
			Mems:            c.Mems,
		}
	}
	if p := r.Pids; p != nil {
		if p.Limit != nil && *p.Limit == 0 {
			return nil, zeroIsUnset("pids.limit")
		}
		out.Pids = &grpc.LinuxPids{Limit: deref(p.Limit)}
	}
	if b := r.BlockIO; b != nil {
		out.BlockIO = fromBlockIO(b)
	}
	if len(r.HugepageLimits) > 0 {
		out.HugepageLimits = make([]*grpc.LinuxHugepageLimit, len(r.HugepageLimits))
		for i, h := range r.HugepageLimits {
			out.HugepageLimits[i] = &grpc.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit}
		}
	}
	if n := r.Network; n != nil {
		out.Network = &grpc.LinuxNetwork{ClassID: deref(n.ClassID)}
		if len(n.Priorities) > 0 {
			out.Network.Priorities = make([]*grpc.LinuxInterfacePriority, len(n.Priorities))
			for i, p := range n.Priorities {
				out.Network.Priorities[i] = &grpc.LinuxInterfacePriority{Name: p.Name, Priority: p.Priority}
			}
		}
	}
	return out, nil
}

func fromBlockIO(b *specs.LinuxBlockIO) *grpc.LinuxBlockIO {
	out := &grpc.LinuxBlockIO{
		Weight:     uint32(deref(b.Weight)),
		LeafWeight: uint32(deref(b.LeafWeight)),
	}
	if len(b.WeightDevice) > 0 {
		out.WeightDevice = make([]*grpc.LinuxWeightDevice, len(b.WeightDevice))
		for i, d := range b.WeightDevice {
			out.WeightDevice[i] = &grpc.LinuxWeightDevice{
				Major:      d.Major,
				Minor:      d.Minor,
				Weight:     uint32(deref(d.Weight)),
				LeafWeight: uint32(deref(d.LeafWeight)),
			}
		}
	}
	throttles := []struct {
		in  []specs.LinuxThrottleDevice
		out *[]*grpc.LinuxThrottleDevice
	}{
		{b.ThrottleReadBpsDevice, &out.ThrottleReadBpsDevice},
		{b.ThrottleWriteBpsDevice, &out.ThrottleWriteBpsDevice},
		{b.ThrottleReadIOPSDevice, &out.ThrottleReadIOPSDevice},
		{b.ThrottleWriteIOPSDevice, &out.ThrottleWriteIOPSDevice},
	}
	for _, t := range throttles {
		if len(t.in) == 0 {
			continue
		}
		devs := make([]*grpc.LinuxThrottleDevice, len(t.in))
		for i, d := range t.in {
			devs[i] = &grpc.LinuxThrottleDevice{Major: d.Major, Minor: d.Minor, Rate: d.Rate}
		}
		*t.out = devs
	}
	return out
}

func fromSeccomp(s *specs.LinuxSeccomp) (*grpc.LinuxSeccomp, error) {
	switch {
	case s.DefaultErrnoRet != nil:
		return nil, unsupported("defaultErrnoRet")
	case s.ListenerPath != "":
		return nil, unsupported("listenerPath")
	case s.ListenerMetadata != "":
		return nil, unsupported("listenerMetadata")
	}
	out := &grpc.LinuxSeccomp{DefaultAction: string(s.DefaultAction)}
	if len(s.Architectures) > 0 {
		out.Architectures = make([]string, len(s.Architectures))
		for i, a := range s.Architectures {
			out.Architectures[i] = string(a)
		}
	}
	if len(s.Flags) > 0 {
		out.Flags = make([]string, len(s.Flags))
		for i, f := range s.Flags {
			out.Flags[i] = string(f)
		}
	}
	if len(s.Syscalls) == 0 {
		return out, nil
	}
	out.Syscalls = make([]*grpc.LinuxSyscall, len(s.Syscalls))
	for i, sc := range s.Syscalls {
		call := &grpc.LinuxSyscall{Names: cloneSlice(sc.Names), Action: string(sc.Action)}
		if sc.ErrnoRet != nil {
			if uint64(*sc.ErrnoRet) > math.MaxUint32 {
				return nil, invalid(index("syscalls", i)+".errnoRet", "%d exceeds %d", *sc.ErrnoRet, uint32(math.MaxUint32))
			}
			call.ErrnoRet = &grpc.LinuxSyscall_Errnoret{Errnoret: uint32(*sc.ErrnoRet)}
		}
		if len(sc.Args) > 0 {
			call.Args = make([]*grpc.LinuxSeccompArg, len(sc.Args))
			for j, a := range sc.Args {
				call.Args[j] = &grpc.LinuxSeccompArg{
					Index:    uint64(a.Index),
					Value:    a.Value,
					ValueTwo: a.ValueTwo,
					Op:       string(a.Op),
				}
			}
		}
		out.Syscalls[i] = call
	}
	return out, nil
}

// deref returns *p, or the zero value (the wire's "unset") for nil.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

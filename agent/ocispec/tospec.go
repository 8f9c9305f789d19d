package ocispec

import (
	"math"
	"os"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/protocols/grpc"
)

// ToSpec converts the spec of a CreateContainerRequest. A nil spec, a null
// entry in a list, or a value that does not fit the runtime-spec type is an
// error wrapping errdefs.ErrInvalidArgument naming the field ("OCI.…").
// See the package documentation for how zero values are read.
func ToSpec(s *grpc.Spec) (*specs.Spec, error) {
	if s == nil {
		return nil, invalid(wireSpecRoot, "missing")
	}
	out, err := toSpec(s)
	if err != nil {
		return nil, under(wireSpecRoot, err)
	}
	return out, nil
}

// ToProcess converts the process of an ExecProcessRequest; errors name the
// field as "process.…".
func ToProcess(p *grpc.Process) (*specs.Process, error) {
	if p == nil {
		return nil, invalid(wireProcessRoot, "missing")
	}
	out, err := toProcess(p)
	if err != nil {
		return nil, under(wireProcessRoot, err)
	}
	return out, nil
}

// ToResources converts the resources of an UpdateContainerRequest; errors
// name the field as "resources.…".
func ToResources(r *grpc.LinuxResources) (*specs.LinuxResources, error) {
	if r == nil {
		return nil, invalid(wireResourcesRoot, "missing")
	}
	out, err := toResources(r)
	if err != nil {
		return nil, under(wireResourcesRoot, err)
	}
	return out, nil
}

func toSpec(s *grpc.Spec) (*specs.Spec, error) {
	out := &specs.Spec{
		Version:     s.Version,
		Hostname:    s.Hostname,
		Annotations: cloneMap(s.Annotations),
	}
	var err error
	if s.Process != nil {
		if out.Process, err = toProcess(s.Process); err != nil {
			return nil, under("Process", err)
		}
	}
	if s.Root != nil {
		out.Root = &specs.Root{Path: s.Root.Path, Readonly: s.Root.Readonly}
	}
	if len(s.Mounts) > 0 {
		out.Mounts = make([]specs.Mount, len(s.Mounts))
		for i, m := range s.Mounts {
			if m == nil {
				return nil, nullEntry("Mounts", i)
			}
			out.Mounts[i] = specs.Mount{
				Destination: m.Destination,
				Source:      m.Source,
				Type:        m.Type,
				Options:     cloneSlice(m.Options),
			}
		}
	}
	if s.Hooks != nil {
		if out.Hooks, err = toHooks(s.Hooks); err != nil {
			return nil, under("Hooks", err)
		}
	}
	if s.Linux != nil {
		if out.Linux, err = toLinux(s.Linux); err != nil {
			return nil, under("Linux", err)
		}
	}
	// Solaris and Windows are placeholders in the proto; nothing to carry.
	return out, nil
}

func toProcess(p *grpc.Process) (*specs.Process, error) {
	out := &specs.Process{
		Terminal:        p.Terminal,
		Args:            cloneSlice(p.Args),
		Env:             cloneSlice(p.Env),
		Cwd:             p.Cwd,
		NoNewPrivileges: p.NoNewPrivileges,
		ApparmorProfile: p.ApparmorProfile,
		SelinuxLabel:    p.SelinuxLabel,
	}
	if b := p.ConsoleSize; b != nil {
		out.ConsoleSize = &specs.Box{Height: uint(b.Height), Width: uint(b.Width)}
	}
	if u := p.User; u != nil {
		out.User = specs.User{
			UID:            u.UID,
			GID:            u.GID,
			AdditionalGids: cloneSlice(u.AdditionalGids),
			Username:       u.Username,
		}
	}
	if c := p.Capabilities; c != nil {
		out.Capabilities = &specs.LinuxCapabilities{
			Bounding:    cloneSlice(c.Bounding),
			Effective:   cloneSlice(c.Effective),
			Inheritable: cloneSlice(c.Inheritable),
			Permitted:   cloneSlice(c.Permitted),
			Ambient:     cloneSlice(c.Ambient),
		}
	}
	if len(p.Rlimits) > 0 {
		out.Rlimits = make([]specs.POSIXRlimit, len(p.Rlimits))
		for i, r := range p.Rlimits {
			if r == nil {
				return nil, nullEntry("Rlimits", i)
			}
			out.Rlimits[i] = specs.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft}
		}
	}
	if p.OOMScoreAdj != 0 {
		v, ok := toInt(p.OOMScoreAdj)
		if !ok {
			return nil, invalid("OOMScoreAdj", "%d does not fit an int", p.OOMScoreAdj)
		}
		out.OOMScoreAdj = &v
	}
	return out, nil
}

func toHooks(h *grpc.Hooks) (*specs.Hooks, error) {
	out := &specs.Hooks{}
	lists := []struct {
		name string
		in   []*grpc.Hook
		out  *[]specs.Hook
	}{
		//lint:ignore SA1019 the wire still carries prestart hooks; carry them.
		{"Prestart", h.Prestart, &out.Prestart},
		{"Poststart", h.Poststart, &out.Poststart},
		{"Poststop", h.Poststop, &out.Poststop},
		{"CreateRuntime", h.CreateRuntime, &out.CreateRuntime},
		{"CreateContainer", h.CreateContainer, &out.CreateContainer},
		{"StartContainer", h.StartContainer, &out.StartContainer},
	}
	for _, l := range lists {
		if len(l.in) == 0 {
			continue
		}
		hooks := make([]specs.Hook, len(l.in))
		for i, hk := range l.in {
			if hk == nil {
				return nil, nullEntry(l.name, i)
			}
			hooks[i] = specs.Hook{Path: hk.Path, Args: cloneSlice(hk.Args), Env: cloneSlice(hk.Env)}
			if hk.Timeout != 0 {
				v, ok := toInt(hk.Timeout)
				if !ok {
					return nil, invalid(index(l.name, i)+".Timeout", "%d does not fit an int", hk.Timeout)
				}
				hooks[i].Timeout = &v
			}
		}
		*l.out = hooks
	}
	return out, nil
}

func toLinux(l *grpc.Linux) (*specs.Linux, error) {
	out := &specs.Linux{
		Sysctl:            cloneMap(l.Sysctl),
		CgroupsPath:       l.CgroupsPath,
		RootfsPropagation: l.RootfsPropagation,
		MaskedPaths:       cloneSlice(l.MaskedPaths),
		ReadonlyPaths:     cloneSlice(l.ReadonlyPaths),
		MountLabel:        l.MountLabel,
	}
	var err error
	if out.UIDMappings, err = toIDMappings("UIDMappings", l.UIDMappings); err != nil {
		return nil, err
	}
	if out.GIDMappings, err = toIDMappings("GIDMappings", l.GIDMappings); err != nil {
		return nil, err
	}
	if l.Resources != nil {
		if out.Resources, err = toResources(l.Resources); err != nil {
			return nil, under("Resources", err)
		}
	}
	if len(l.Namespaces) > 0 {
		out.Namespaces = make([]specs.LinuxNamespace, len(l.Namespaces))
		for i, ns := range l.Namespaces {
			if ns == nil {
				return nil, nullEntry("Namespaces", i)
			}
			out.Namespaces[i] = specs.LinuxNamespace{Type: specs.LinuxNamespaceType(ns.Type), Path: ns.Path}
		}
	}
	if len(l.Devices) > 0 {
		out.Devices = make([]specs.LinuxDevice, len(l.Devices))
		for i, d := range l.Devices {
			if d == nil {
				return nil, nullEntry("Devices", i)
			}
			// Always set, as kata-agent does: the wire cannot say "unset".
			mode := os.FileMode(d.FileMode)
			uid, gid := d.UID, d.GID
			out.Devices[i] = specs.LinuxDevice{
				Path:     d.Path,
				Type:     d.Type,
				Major:    d.Major,
				Minor:    d.Minor,
				FileMode: &mode,
				UID:      &uid,
				GID:      &gid,
			}
		}
	}
	if l.Seccomp != nil {
		if out.Seccomp, err = toSeccomp(l.Seccomp); err != nil {
			return nil, under("Seccomp", err)
		}
	}
	if l.IntelRdt != nil {
		out.IntelRdt = &specs.LinuxIntelRdt{L3CacheSchema: l.IntelRdt.L3CacheSchema}
	}
	return out, nil
}

func toIDMappings(field string, in []*grpc.LinuxIDMapping) ([]specs.LinuxIDMapping, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]specs.LinuxIDMapping, len(in))
	for i, m := range in {
		if m == nil {
			return nil, nullEntry(field, i)
		}
		out[i] = specs.LinuxIDMapping{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Size}
	}
	return out, nil
}

func toResources(r *grpc.LinuxResources) (*specs.LinuxResources, error) {
	out := &specs.LinuxResources{}
	if len(r.Devices) > 0 {
		out.Devices = make([]specs.LinuxDeviceCgroup, len(r.Devices))
		for i, d := range r.Devices {
			if d == nil {
				return nil, nullEntry("Devices", i)
			}
			out.Devices[i] = specs.LinuxDeviceCgroup{
				Allow:  d.Allow,
				Type:   d.Type,
				Major:  nonZero(d.Major),
				Minor:  nonZero(d.Minor),
				Access: d.Access,
			}
		}
	}
	if m := r.Memory; m != nil {
		out.Memory = &specs.LinuxMemory{
			Limit:       nonZero(m.Limit),
			Reservation: nonZero(m.Reservation),
			Swap:        nonZero(m.Swap),
			//lint:ignore SA1019 the wire carries kernel memory; libcontainer warns and ignores it.
			Kernel:           nonZero(m.Kernel),
			KernelTCP:        nonZero(m.KernelTCP),
			Swappiness:       nonZero(m.Swappiness),
			DisableOOMKiller: nonZero(m.DisableOOMKiller),
		}
	}
	if c := r.CPU; c != nil {
		out.CPU = &specs.LinuxCPU{
			Shares:          nonZero(c.Shares),
			Quota:           nonZero(c.Quota),
			Period:          nonZero(c.Period),
			RealtimeRuntime: nonZero(c.RealtimeRuntime),
			RealtimePeriod:  nonZero(c.RealtimePeriod),
			Cpus:            c.Cpus,
			Mems:            c.Mems,
		}
	}
	if r.Pids != nil {
		out.Pids = &specs.LinuxPids{Limit: nonZero(r.Pids.Limit)}
	}
	if r.BlockIO != nil {
		b, err := toBlockIO(r.BlockIO)
		if err != nil {
			return nil, under("BlockIO", err)
		}
		out.BlockIO = b
	}
	if len(r.HugepageLimits) > 0 {
		out.HugepageLimits = make([]specs.LinuxHugepageLimit, len(r.HugepageLimits))
		for i, h := range r.HugepageLimits {
			if h == nil {
				return nil, nullEntry("HugepageLimits", i)
			}
			out.HugepageLimits[i] = specs.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit}
		}
	}
	if n := r.Network; n != nil {
		out.Network = &specs.LinuxNetwork{ClassID: nonZero(n.ClassID)}
		if len(n.Priorities) > 0 {
			out.Network.Priorities = make([]specs.LinuxInterfacePriority, len(n.Priorities))
			for i, p := range n.Priorities {
				if p == nil {
					return nil, under("Network", nullEntry("Priorities", i))
				}
				out.Network.Priorities[i] = specs.LinuxInterfacePriority{Name: p.Name, Priority: p.Priority}
			}
		}
	}
	return out, nil
}

func toBlockIO(b *grpc.LinuxBlockIO) (*specs.LinuxBlockIO, error) {
	out := &specs.LinuxBlockIO{}
	var err error
	if out.Weight, err = toWeight("Weight", b.Weight); err != nil {
		return nil, err
	}
	if out.LeafWeight, err = toWeight("LeafWeight", b.LeafWeight); err != nil {
		return nil, err
	}
	if len(b.WeightDevice) > 0 {
		out.WeightDevice = make([]specs.LinuxWeightDevice, len(b.WeightDevice))
		for i, d := range b.WeightDevice {
			if d == nil {
				return nil, nullEntry("WeightDevice", i)
			}
			wd := specs.LinuxWeightDevice{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: d.Major, Minor: d.Minor}}
			if wd.Weight, err = toWeight("Weight", d.Weight); err != nil {
				return nil, under(index("WeightDevice", i), err)
			}
			if wd.LeafWeight, err = toWeight("LeafWeight", d.LeafWeight); err != nil {
				return nil, under(index("WeightDevice", i), err)
			}
			out.WeightDevice[i] = wd
		}
	}
	throttles := []struct {
		name string
		in   []*grpc.LinuxThrottleDevice
		out  *[]specs.LinuxThrottleDevice
	}{
		{"ThrottleReadBpsDevice", b.ThrottleReadBpsDevice, &out.ThrottleReadBpsDevice},
		{"ThrottleWriteBpsDevice", b.ThrottleWriteBpsDevice, &out.ThrottleWriteBpsDevice},
		{"ThrottleReadIOPSDevice", b.ThrottleReadIOPSDevice, &out.ThrottleReadIOPSDevice},
		{"ThrottleWriteIOPSDevice", b.ThrottleWriteIOPSDevice, &out.ThrottleWriteIOPSDevice},
	}
	for _, t := range throttles {
		if len(t.in) == 0 {
			continue
		}
		devs := make([]specs.LinuxThrottleDevice, len(t.in))
		for i, d := range t.in {
			if d == nil {
				return nil, nullEntry(t.name, i)
			}
			devs[i] = specs.LinuxThrottleDevice{
				LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: d.Major, Minor: d.Minor},
				Rate:               d.Rate,
			}
		}
		*t.out = devs
	}
	return out, nil
}

// toWeight maps a blkio weight: 0 is unset, and runtime-spec holds 16 bits.
func toWeight(field string, w uint32) (*uint16, error) {
	if w == 0 {
		return nil, nil
	}
	if w > math.MaxUint16 {
		return nil, invalid(field, "%d exceeds %d", w, math.MaxUint16)
	}
	v := uint16(w)
	return &v, nil
}

func toSeccomp(s *grpc.LinuxSeccomp) (*specs.LinuxSeccomp, error) {
	out := &specs.LinuxSeccomp{DefaultAction: specs.LinuxSeccompAction(s.DefaultAction)}
	if len(s.Architectures) > 0 {
		out.Architectures = make([]specs.Arch, len(s.Architectures))
		for i, a := range s.Architectures {
			out.Architectures[i] = specs.Arch(a)
		}
	}
	if len(s.Flags) > 0 {
		out.Flags = make([]specs.LinuxSeccompFlag, len(s.Flags))
		for i, f := range s.Flags {
			out.Flags[i] = specs.LinuxSeccompFlag(f)
		}
	}
	if len(s.Syscalls) == 0 {
		return out, nil
	}
	out.Syscalls = make([]specs.LinuxSyscall, len(s.Syscalls))
	for i, sc := range s.Syscalls {
		if sc == nil {
			return nil, nullEntry("Syscalls", i)
		}
		call := specs.LinuxSyscall{
			Names:  cloneSlice(sc.Names),
			Action: specs.LinuxSeccompAction(sc.Action),
		}
		// The oneof tells "errno 0" from "unset": only a set oneof becomes
		// a pointer (nil with SCMP_ACT_ERRNO means EPERM to runc).
		if e, ok := sc.ErrnoRet.(*grpc.LinuxSyscall_Errnoret); ok && e != nil {
			v := uint(e.Errnoret)
			call.ErrnoRet = &v
		}
		if len(sc.Args) > 0 {
			call.Args = make([]specs.LinuxSeccompArg, len(sc.Args))
			for j, a := range sc.Args {
				if a == nil {
					return nil, under(index("Syscalls", i), nullEntry("Args", j))
				}
				idx, ok := toUint(a.Index)
				if !ok {
					return nil, under(index("Syscalls", i), invalid(index("Args", j)+".Index", "%d does not fit a uint", a.Index))
				}
				call.Args[j] = specs.LinuxSeccompArg{
					Index:    idx,
					Value:    a.Value,
					ValueTwo: a.ValueTwo,
					Op:       specs.LinuxSeccompOperator(a.Op),
				}
			}
		}
		out.Syscalls[i] = call
	}
	return out, nil
}

// nonZero returns nil for the zero value (the wire's "unset") and a pointer
// to a copy otherwise.
func nonZero[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

func toInt(v int64) (int, bool) {
	i := int(v)
	return i, int64(i) == v
}

func toUint(v uint64) (uint, bool) {
	u := uint(v)
	return u, uint64(u) == v
}

// cloneSlice copies s; empty becomes nil so that "absent" has one form.
func cloneSlice[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return append(make([]T, 0, len(s)), s...)
}

// cloneMap copies m; empty becomes nil.
func cloneMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

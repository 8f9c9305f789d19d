package ocispec

import (
	"errors"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/protocols/grpc"
)

func ptr[T any](v T) *T { return &v }

// populatedSpec is a readable, heavily populated spec: resources, devices,
// seccomp with errno set (also to 0) and unset, hooks and ID mappings.
func populatedSpec() *specs.Spec {
	s := specconv.Example()
	s.Process.ConsoleSize = &specs.Box{Height: 24, Width: 80}
	s.Process.User = specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{10, 20}, Username: "app"}
	s.Process.Capabilities.Ambient = []string{"CAP_KILL"}
	s.Process.Capabilities.Inheritable = []string{"CAP_CHOWN"}
	s.Process.ApparmorProfile = "cova-default"
	s.Process.SelinuxLabel = "system_u:system_r:container_t:s0"
	s.Process.OOMScoreAdj = ptr(-997)
	s.Hostname = "box"
	s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "empty": ""}
	s.Hooks = &specs.Hooks{
		CreateRuntime:   []specs.Hook{{Path: "/bin/hook", Args: []string{"hook", "create"}, Env: []string{"A=1"}, Timeout: ptr(5)}},
		CreateContainer: []specs.Hook{{Path: "/bin/cc"}},
		StartContainer:  []specs.Hook{{Path: "/bin/sc", Timeout: ptr(1)}},
		Poststart:       []specs.Hook{{Path: "/bin/ps"}, {Path: "/bin/ps2", Args: []string{"x"}}},
		Poststop:        []specs.Hook{{Path: "/bin/stop"}},
	}
	s.Hooks.Prestart = []specs.Hook{{Path: "/bin/pre"}} //lint:ignore SA1019 the wire carries prestart hooks
	l := s.Linux
	l.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	l.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 1000}, {ContainerID: 1000, HostID: 1000, Size: 1}}
	l.Sysctl = map[string]string{"net.ipv4.ip_forward": "1"}
	l.CgroupsPath = "/kubepods/pod1/c1"
	l.Namespaces = append(l.Namespaces,
		specs.LinuxNamespace{Type: specs.UserNamespace},
		specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"})
	l.Devices = []specs.LinuxDevice{
		{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229, FileMode: ptr(os.FileMode(0o666)), UID: ptr(uint32(0)), GID: ptr(uint32(0))},
		{Path: "/dev/vdb", Type: "b", Major: 254, Minor: 16, FileMode: ptr(os.FileMode(0o600)), UID: ptr(uint32(1000)), GID: ptr(uint32(6))},
	}
	l.RootfsPropagation = "rslave"
	l.MountLabel = "system_u:object_r:container_file_t:s0"
	l.IntelRdt = &specs.LinuxIntelRdt{L3CacheSchema: "L3:0=ffff"}
	l.Resources = &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			{Allow: true, Type: "c", Major: ptr(int64(1)), Minor: ptr(int64(3)), Access: "rwm"},
			{Allow: true, Type: "c", Major: ptr(int64(136)), Access: "rw"},
		},
		Memory: &specs.LinuxMemory{
			Limit: ptr(int64(256 << 20)), Reservation: ptr(int64(128 << 20)), Swap: ptr(int64(-1)),
			KernelTCP: ptr(int64(1 << 20)), Swappiness: ptr(uint64(10)), DisableOOMKiller: ptr(true),
		},
		CPU: &specs.LinuxCPU{
			Shares: ptr(uint64(1024)), Quota: ptr(int64(-1)), Period: ptr(uint64(100000)),
			RealtimeRuntime: ptr(int64(950000)), RealtimePeriod: ptr(uint64(1000000)), Cpus: "0-1", Mems: "0",
		},
		Pids: &specs.LinuxPids{Limit: ptr(int64(-1))},
		BlockIO: &specs.LinuxBlockIO{
			Weight: ptr(uint16(500)), LeafWeight: ptr(uint16(300)),
			WeightDevice: []specs.LinuxWeightDevice{
				{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Weight: ptr(uint16(600))},
				{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 16}, LeafWeight: ptr(uint16(math.MaxUint16))},
			},
			ThrottleReadBpsDevice:   []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Rate: 1 << 20}},
			ThrottleWriteBpsDevice:  []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 1}, Rate: 2 << 20}},
			ThrottleReadIOPSDevice:  []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 2}, Rate: 100}},
			ThrottleWriteIOPSDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 3}, Rate: 200}},
		},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 1 << 30}, {Pagesize: "1GB", Limit: 0}},
		Network:        &specs.LinuxNetwork{ClassID: ptr(uint32(0x100001)), Priorities: []specs.LinuxInterfacePriority{{Name: "eth0", Priority: 5}}},
	}
	l.Resources.Memory.Kernel = ptr(int64(64 << 20)) //lint:ignore SA1019 the wire carries kernel memory
	l.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActErrno,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86},
		Flags:         []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read", "write"}, Action: specs.ActAllow},
			{Names: []string{"mount"}, Action: specs.ActErrno, ErrnoRet: ptr(uint(1))},
			{Names: []string{"reboot"}, Action: specs.ActErrno, ErrnoRet: ptr(uint(0))},
			{Names: []string{"personality"}, Action: specs.ActErrno},
			{Names: []string{"clone"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: 0x7e020000, ValueTwo: 0, Op: specs.OpMaskedEqual},
				{Index: 5, Value: 1, ValueTwo: 2, Op: specs.OpGreaterThan},
			}},
		},
	}
	return s
}

func TestRoundTripFromSpec(t *testing.T) {
	tests := map[string]func(*testing.T) *specs.Spec{
		"runc example": func(*testing.T) *specs.Spec { return specconv.Example() },
		"populated":    func(*testing.T) *specs.Spec { return populatedSpec() },
		"every supported field": func(t *testing.T) *specs.Spec {
			s := &specs.Spec{}
			(&filler{}).fillGo(t, reflect.ValueOf(s).Elem(), "", unsupportedPaths(), map[string]bool{})
			return s
		},
		"empty": func(*testing.T) *specs.Spec { return &specs.Spec{} },
	}
	for name, mk := range tests {
		t.Run(name, func(t *testing.T) {
			want := mk(t)
			w, err := FromSpec(want)
			if err != nil {
				t.Fatalf("FromSpec: %v", err)
			}
			got, err := ToSpec(roundTripWire(t, w))
			if err != nil {
				t.Fatalf("ToSpec: %v", err)
			}
			if want.Process == nil {
				// The wire has no way to send an absent process; neither
				// direction invents one.
				if got.Process != nil {
					t.Errorf("process appeared: %+v", got.Process)
				}
			}
			assertEqual(t, got, want)
		})
	}
}

func TestRoundTripToSpec(t *testing.T) {
	want := fullProtoSpec()
	s, err := ToSpec(roundTripWire(t, want))
	if err != nil {
		t.Fatalf("ToSpec: %v", err)
	}
	got, err := FromSpec(s)
	if err != nil {
		t.Fatalf("FromSpec: %v", err)
	}
	assertProtoEqual(t, got, want)
	// The conversion must copy, not alias: changing the result leaves the
	// message alone.
	s.Process.Env[0] = "CHANGED=1"
	s.Linux.Resources.Devices[0].Access = "changed"
	s.Annotations["new"] = "x"
	if want.Process.Env[0] == "CHANGED=1" || want.Linux.Resources.Devices[0].Access == "changed" || want.Annotations["new"] == "x" {
		t.Error("ToSpec result aliases the message")
	}
}

func TestToSpecZeroValues(t *testing.T) {
	in := &grpc.Spec{
		Process: &grpc.Process{Cwd: "/"},
		Hooks:   &grpc.Hooks{Poststart: []*grpc.Hook{{Path: "/h"}, {Path: "/h", Timeout: -2}}},
		Linux: &grpc.Linux{
			Resources: &grpc.LinuxResources{
				Devices: []*grpc.LinuxDeviceCgroup{{Access: "rwm"}, {Major: -1, Minor: 7}},
				Memory:  &grpc.LinuxMemory{Swap: -1},
				CPU:     &grpc.LinuxCPU{Quota: -1},
				Pids:    &grpc.LinuxPids{},
				BlockIO: &grpc.LinuxBlockIO{WeightDevice: []*grpc.LinuxWeightDevice{{Major: 8}}},
				Network: &grpc.LinuxNetwork{},
			},
			Devices: []*grpc.LinuxDevice{{Path: "/dev/x", Type: "c", Major: 1, Minor: 2}},
			Seccomp: &grpc.LinuxSeccomp{Syscalls: []*grpc.LinuxSyscall{
				{Names: []string{"a"}},
				{Names: []string{"b"}, ErrnoRet: &grpc.LinuxSyscall_Errnoret{Errnoret: 0}},
				{Names: []string{"c"}, ErrnoRet: &grpc.LinuxSyscall_Errnoret{Errnoret: 38}},
			}},
			IntelRdt: &grpc.LinuxIntelRdt{},
		},
		Solaris: &grpc.Solaris{Dummy: "x"},
		Windows: &grpc.Windows{Dummy: "x"},
	}
	want := &specs.Spec{
		Process: &specs.Process{Cwd: "/"},
		Hooks:   &specs.Hooks{Poststart: []specs.Hook{{Path: "/h"}, {Path: "/h", Timeout: ptr(-2)}}},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Access: "rwm"}, {Major: ptr(int64(-1)), Minor: ptr(int64(7))}},
				Memory:  &specs.LinuxMemory{Swap: ptr(int64(-1))},
				CPU:     &specs.LinuxCPU{Quota: ptr(int64(-1))},
				Pids:    &specs.LinuxPids{},
				BlockIO: &specs.LinuxBlockIO{WeightDevice: []specs.LinuxWeightDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8}}}},
				Network: &specs.LinuxNetwork{},
			},
			Devices: []specs.LinuxDevice{{Path: "/dev/x", Type: "c", Major: 1, Minor: 2, FileMode: ptr(os.FileMode(0)), UID: ptr(uint32(0)), GID: ptr(uint32(0))}},
			Seccomp: &specs.LinuxSeccomp{Syscalls: []specs.LinuxSyscall{
				{Names: []string{"a"}},
				{Names: []string{"b"}, ErrnoRet: ptr(uint(0))},
				{Names: []string{"c"}, ErrnoRet: ptr(uint(38))},
			}},
			IntelRdt: &specs.LinuxIntelRdt{},
		},
	}
	got, err := ToSpec(in)
	if err != nil {
		t.Fatalf("ToSpec: %v", err)
	}
	assertEqual(t, got, want)
}

func TestToSpecErrors(t *testing.T) {
	tests := map[string]struct {
		spec *grpc.Spec
		path string
	}{
		"nil spec":            {nil, "OCI"},
		"blkio weight":        {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{Weight: 70000}}}}, "OCI.Linux.Resources.BlockIO.Weight"},
		"blkio leaf weight":   {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{LeafWeight: math.MaxUint16 + 1}}}}, "OCI.Linux.Resources.BlockIO.LeafWeight"},
		"weight device":       {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{WeightDevice: []*grpc.LinuxWeightDevice{{}, {Weight: 1 << 20}}}}}}, "OCI.Linux.Resources.BlockIO.WeightDevice[1].Weight"},
		"weight device leaf":  {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{WeightDevice: []*grpc.LinuxWeightDevice{{LeafWeight: math.MaxUint32}}}}}}, "OCI.Linux.Resources.BlockIO.WeightDevice[0].LeafWeight"},
		"null mount":          {&grpc.Spec{Mounts: []*grpc.Mount{{}, nil}}, "OCI.Mounts[1]"},
		"null rlimit":         {&grpc.Spec{Process: &grpc.Process{Rlimits: []*grpc.POSIXRlimit{nil}}}, "OCI.Process.Rlimits[0]"},
		"null hook":           {&grpc.Spec{Hooks: &grpc.Hooks{Poststop: []*grpc.Hook{{}, {}, nil}}}, "OCI.Hooks.Poststop[2]"},
		"null uid mapping":    {&grpc.Spec{Linux: &grpc.Linux{UIDMappings: []*grpc.LinuxIDMapping{nil}}}, "OCI.Linux.UIDMappings[0]"},
		"null gid mapping":    {&grpc.Spec{Linux: &grpc.Linux{GIDMappings: []*grpc.LinuxIDMapping{{}, nil}}}, "OCI.Linux.GIDMappings[1]"},
		"null namespace":      {&grpc.Spec{Linux: &grpc.Linux{Namespaces: []*grpc.LinuxNamespace{nil}}}, "OCI.Linux.Namespaces[0]"},
		"null device":         {&grpc.Spec{Linux: &grpc.Linux{Devices: []*grpc.LinuxDevice{nil}}}, "OCI.Linux.Devices[0]"},
		"null device cgroup":  {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{Devices: []*grpc.LinuxDeviceCgroup{nil}}}}, "OCI.Linux.Resources.Devices[0]"},
		"null hugepage limit": {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{HugepageLimits: []*grpc.LinuxHugepageLimit{nil}}}}, "OCI.Linux.Resources.HugepageLimits[0]"},
		"null priority":       {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{Network: &grpc.LinuxNetwork{Priorities: []*grpc.LinuxInterfacePriority{nil}}}}}, "OCI.Linux.Resources.Network.Priorities[0]"},
		"null weight device":  {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{WeightDevice: []*grpc.LinuxWeightDevice{nil}}}}}, "OCI.Linux.Resources.BlockIO.WeightDevice[0]"},
		"null throttle":       {&grpc.Spec{Linux: &grpc.Linux{Resources: &grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{ThrottleWriteIOPSDevice: []*grpc.LinuxThrottleDevice{nil}}}}}, "OCI.Linux.Resources.BlockIO.ThrottleWriteIOPSDevice[0]"},
		"null syscall":        {&grpc.Spec{Linux: &grpc.Linux{Seccomp: &grpc.LinuxSeccomp{Syscalls: []*grpc.LinuxSyscall{nil}}}}, "OCI.Linux.Seccomp.Syscalls[0]"},
		"null seccomp arg":    {&grpc.Spec{Linux: &grpc.Linux{Seccomp: &grpc.LinuxSeccomp{Syscalls: []*grpc.LinuxSyscall{{}, {Args: []*grpc.LinuxSeccompArg{{}, nil}}}}}}, "OCI.Linux.Seccomp.Syscalls[1].Args[1]"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ToSpec(tc.spec)
			assertFieldError(t, err, tc.path, errdefs.ErrInvalidArgument)
			if got != nil {
				t.Errorf("result %v with error", got)
			}
		})
	}
}

func assertFieldError(t *testing.T, err error, path string, class error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %q", path)
	}
	if !errors.Is(err, class) {
		t.Errorf("error %q is not %v", err, class)
	}
	if !strings.HasPrefix(err.Error(), path+": ") {
		t.Errorf("error %q does not start with the field path %q", err, path)
	}
}

func TestToProcessAndResources(t *testing.T) {
	p := &grpc.Process{Args: []string{"sh"}, Env: []string{"A=b"}, Cwd: "/w", User: &grpc.User{UID: 5}, OOMScoreAdj: 100}
	got, err := ToProcess(p)
	if err != nil {
		t.Fatalf("ToProcess: %v", err)
	}
	assertEqual(t, got, &specs.Process{Args: []string{"sh"}, Env: []string{"A=b"}, Cwd: "/w", User: specs.User{UID: 5}, OOMScoreAdj: ptr(100)})

	r := &grpc.LinuxResources{CPU: &grpc.LinuxCPU{Shares: 2, Cpus: "1"}, Pids: &grpc.LinuxPids{Limit: 10}}
	gotR, err := ToResources(r)
	if err != nil {
		t.Fatalf("ToResources: %v", err)
	}
	assertEqual(t, gotR, &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: ptr(uint64(2)), Cpus: "1"}, Pids: &specs.LinuxPids{Limit: ptr(int64(10))}})

	errs := map[string]struct {
		err  func() error
		path string
	}{
		"nil process":    {func() error { _, err := ToProcess(nil); return err }, "process"},
		"process rlimit": {func() error { _, err := ToProcess(&grpc.Process{Rlimits: []*grpc.POSIXRlimit{nil}}); return err }, "process.Rlimits[0]"},
		"nil resources":  {func() error { _, err := ToResources(nil); return err }, "resources"},
		"resources weight": {func() error {
			_, err := ToResources(&grpc.LinuxResources{BlockIO: &grpc.LinuxBlockIO{Weight: 1 << 16}})
			return err
		}, "resources.BlockIO.Weight"},
		"nil FromProcess":   {func() error { _, err := FromProcess(nil); return err }, "process"},
		"nil FromResources": {func() error { _, err := FromResources(nil); return err }, "resources"},
		"nil FromSpec":      {func() error { _, err := FromSpec(nil); return err }, "spec"},
	}
	for name, tc := range errs {
		t.Run(name, func(t *testing.T) {
			assertFieldError(t, tc.err(), tc.path, errdefs.ErrInvalidArgument)
		})
	}
}

func TestFromProcessAndResources(t *testing.T) {
	p := &specs.Process{Args: []string{"sh"}, Cwd: "/", User: specs.User{UID: 1}, OOMScoreAdj: ptr(5)}
	w, err := FromProcess(p)
	if err != nil {
		t.Fatalf("FromProcess: %v", err)
	}
	back, err := ToProcess(roundTripWire(t, w))
	if err != nil {
		t.Fatalf("ToProcess: %v", err)
	}
	assertEqual(t, back, p)

	r := populatedSpec().Linux.Resources
	wr, err := FromResources(r)
	if err != nil {
		t.Fatalf("FromResources: %v", err)
	}
	backR, err := ToResources(roundTripWire(t, wr))
	if err != nil {
		t.Fatalf("ToResources: %v", err)
	}
	assertEqual(t, backR, r)

	_, err = FromProcess(&specs.Process{User: specs.User{Umask: ptr(uint32(0o22))}})
	assertFieldError(t, err, "process.user.umask", errdefs.ErrNotImplemented)
	_, err = FromResources(&specs.LinuxResources{Unified: map[string]string{"memory.high": "1"}})
	assertFieldError(t, err, "resources.unified", errdefs.ErrNotImplemented)
}

func TestFromSpecDeviceDefaults(t *testing.T) {
	s := &specs.Spec{Linux: &specs.Linux{Devices: []specs.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3}}}}
	w, err := FromSpec(s)
	if err != nil {
		t.Fatalf("FromSpec: %v", err)
	}
	if got := w.Linux.Devices[0].FileMode; got != 0o666 {
		t.Errorf("nil fileMode sent as %#o, want 0666 (runc's default)", got)
	}
	got, err := ToSpec(w)
	if err != nil {
		t.Fatalf("ToSpec: %v", err)
	}
	want := []specs.LinuxDevice{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3, FileMode: ptr(os.FileMode(0o666)), UID: ptr(uint32(0)), GID: ptr(uint32(0))}}
	assertEqual(t, got.Linux.Devices, want)
}

// unsupportedCases sets, one at a time, each runtime-spec field the proto
// cannot carry. The key is the config.json path FromSpec must name.
var unsupportedCases = map[string]func(*specs.Spec){
	"domainname":                          func(s *specs.Spec) { s.Domainname = "example.org" },
	"solaris":                             func(s *specs.Spec) { s.Solaris = &specs.Solaris{} },
	"windows":                             func(s *specs.Spec) { s.Windows = &specs.Windows{} },
	"vm":                                  func(s *specs.Spec) { s.VM = &specs.VM{} },
	"zos":                                 func(s *specs.Spec) { s.ZOS = &specs.ZOS{} },
	"freebsd":                             func(s *specs.Spec) { s.FreeBSD = &specs.FreeBSD{} },
	"process.commandLine":                 func(s *specs.Spec) { s.Process.CommandLine = "cmd /c dir" },
	"process.scheduler":                   func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedBatch} },
	"process.ioPriority":                  func(s *specs.Spec) { s.Process.IOPriority = &specs.LinuxIOPriority{Class: specs.IOPRIO_CLASS_IDLE} },
	"process.execCPUAffinity":             func(s *specs.Spec) { s.Process.ExecCPUAffinity = &specs.CPUAffinity{Initial: "0"} },
	"process.user.umask":                  func(s *specs.Spec) { s.Process.User.Umask = ptr(uint32(0o77)) },
	"mounts[0].uidMappings":               func(s *specs.Spec) { s.Mounts[0].UIDMappings = []specs.LinuxIDMapping{{Size: 1}} },
	"mounts[0].gidMappings":               func(s *specs.Spec) { s.Mounts[0].GIDMappings = []specs.LinuxIDMapping{} },
	"linux.netDevices":                    func(s *specs.Spec) { s.Linux.NetDevices = map[string]specs.LinuxNetDevice{"eth1": {}} },
	"linux.memoryPolicy":                  func(s *specs.Spec) { s.Linux.MemoryPolicy = &specs.LinuxMemoryPolicy{Mode: specs.MpolBind} },
	"linux.personality":                   func(s *specs.Spec) { s.Linux.Personality = &specs.LinuxPersonality{Domain: specs.PerLinux32} },
	"linux.timeOffsets":                   func(s *specs.Spec) { s.Linux.TimeOffsets = map[string]specs.LinuxTimeOffset{"boottime": {Secs: 1}} },
	"linux.resources.rdma":                func(s *specs.Spec) { s.Linux.Resources.Rdma = map[string]specs.LinuxRdma{"mlx": {}} },
	"linux.resources.unified":             func(s *specs.Spec) { s.Linux.Resources.Unified = map[string]string{"memory.high": "1G"} },
	"linux.resources.memory.useHierarchy": func(s *specs.Spec) { s.Linux.Resources.Memory = &specs.LinuxMemory{UseHierarchy: ptr(false)} },
	"linux.resources.memory.checkBeforeUpdate": func(s *specs.Spec) { s.Linux.Resources.Memory = &specs.LinuxMemory{CheckBeforeUpdate: ptr(true)} },
	"linux.resources.cpu.burst":                func(s *specs.Spec) { s.Linux.Resources.CPU = &specs.LinuxCPU{Burst: ptr(uint64(0))} },
	"linux.resources.cpu.idle":                 func(s *specs.Spec) { s.Linux.Resources.CPU = &specs.LinuxCPU{Idle: ptr(int64(1))} },
	"linux.seccomp.defaultErrnoRet":            func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultErrnoRet: ptr(uint(1))} },
	"linux.seccomp.listenerPath":               func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{ListenerPath: "/run/l.sock"} },
	"linux.seccomp.listenerMetadata":           func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{ListenerMetadata: "m"} },
	"linux.intelRdt.closID":                    func(s *specs.Spec) { s.Linux.IntelRdt = &specs.LinuxIntelRdt{ClosID: "c"} },
	"linux.intelRdt.schemata":                  func(s *specs.Spec) { s.Linux.IntelRdt = &specs.LinuxIntelRdt{Schemata: []string{"L3:0=f"}} },
	"linux.intelRdt.memBwSchema":               func(s *specs.Spec) { s.Linux.IntelRdt = &specs.LinuxIntelRdt{MemBwSchema: "MB:0=70"} },
	"linux.intelRdt.enableMonitoring":          func(s *specs.Spec) { s.Linux.IntelRdt = &specs.LinuxIntelRdt{EnableMonitoring: true} },
}

// unsupportedPaths is unsupportedCases' keys with list indices as "[]".
func unsupportedPaths() map[string]bool {
	out := make(map[string]bool, len(unsupportedCases))
	for p := range unsupportedCases {
		out[strings.ReplaceAll(p, "[0]", "[]")] = true
	}
	return out
}

func TestFromSpecUnsupported(t *testing.T) {
	for path, set := range unsupportedCases {
		t.Run(path, func(t *testing.T) {
			s := specconv.Example()
			set(s)
			got, err := FromSpec(s)
			assertFieldError(t, err, path, errdefs.ErrNotImplemented)
			if got != nil {
				t.Errorf("result %v with error", got)
			}
		})
	}
}

// TestUnsupportedListIsComplete walks every runtime-spec field: each must
// either survive the round trip (TestRoundTripFromSpec "every supported
// field") or be listed in unsupportedCases. A field added by a runtime-spec
// upgrade that FromSpec silently drops fails that round trip; a stale entry
// here fails this test.
func TestUnsupportedListIsComplete(t *testing.T) {
	skip := unsupportedPaths()
	seen := map[string]bool{}
	(&filler{}).fillGo(t, reflect.ValueOf(&specs.Spec{}).Elem(), "", skip, seen)
	for _, p := range sortedKeys(skip) {
		if !seen[p] {
			t.Errorf("unsupportedCases lists %q, which is not a runtime-spec field path", p)
		}
	}
}

func TestFromSpecInvalid(t *testing.T) {
	over32 := uint64(math.MaxUint32) + 1 // a variable: truncates, not a compile error, on 32-bit
	tests := map[string]struct {
		set  func(*specs.Spec)
		path string
	}{
		"oomScoreAdj 0":  {func(s *specs.Spec) { s.Process.OOMScoreAdj = ptr(0) }, "process.oomScoreAdj"},
		"hook timeout 0": {func(s *specs.Spec) { s.Hooks = &specs.Hooks{Poststart: []specs.Hook{{}, {Timeout: ptr(0)}}} }, "hooks.poststart[1].timeout"},
		"device major 0": {func(s *specs.Spec) { s.Linux.Resources.Devices[0].Major = ptr(int64(0)) }, "linux.resources.devices[0].major"},
		"device minor 0": {func(s *specs.Spec) { s.Linux.Resources.Devices[0].Minor = ptr(int64(0)) }, "linux.resources.devices[0].minor"},
		"swappiness 0":   {func(s *specs.Spec) { s.Linux.Resources.Memory = &specs.LinuxMemory{Swappiness: ptr(uint64(0))} }, "linux.resources.memory.swappiness"},
		"pids limit 0":   {func(s *specs.Spec) { s.Linux.Resources.Pids = &specs.LinuxPids{Limit: ptr(int64(0))} }, "linux.resources.pids.limit"},
		"errnoRet over 32bit": {func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{Syscalls: []specs.LinuxSyscall{{ErrnoRet: ptr(uint(over32))}}}
		}, "linux.seccomp.syscalls[0].errnoRet"},
		"console height": {func(s *specs.Spec) { s.Process.ConsoleSize = &specs.Box{Height: uint(over32)} }, "process.consoleSize.height"},
		"console width":  {func(s *specs.Spec) { s.Process.ConsoleSize = &specs.Box{Width: math.MaxUint} }, "process.consoleSize.width"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if strconv.IntSize < 64 && (strings.Contains(tc.path, "consoleSize") || strings.Contains(tc.path, "errnoRet")) {
				t.Skip("uint is 32 bits: the value cannot be built")
			}
			s := specconv.Example()
			tc.set(s)
			_, err := FromSpec(s)
			assertFieldError(t, err, tc.path, errdefs.ErrInvalidArgument)
		})
	}
}

// A set zero that libcontainer reads like "unset" is sent as 0 without fuss.
func TestFromSpecHarmlessZeros(t *testing.T) {
	s := specconv.Example()
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: ptr(int64(0)), DisableOOMKiller: ptr(false)}
	s.Linux.Resources.CPU = &specs.LinuxCPU{Shares: ptr(uint64(0)), Quota: ptr(int64(0))}
	s.Linux.Resources.BlockIO = &specs.LinuxBlockIO{Weight: ptr(uint16(0))}
	s.Linux.Resources.Network = &specs.LinuxNetwork{ClassID: ptr(uint32(0))}
	w, err := FromSpec(s)
	if err != nil {
		t.Fatalf("FromSpec: %v", err)
	}
	got, err := ToSpec(w)
	if err != nil {
		t.Fatalf("ToSpec: %v", err)
	}
	want := &specs.LinuxResources{
		Devices: s.Linux.Resources.Devices,
		Memory:  &specs.LinuxMemory{},
		CPU:     &specs.LinuxCPU{},
		BlockIO: &specs.LinuxBlockIO{},
		Network: &specs.LinuxNetwork{},
	}
	assertEqual(t, got.Linux.Resources, want)
}

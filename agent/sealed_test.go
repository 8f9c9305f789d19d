package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/cova-project/cova/agent"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// TestSealedEnv: env values that are sealed secrets reach the container in
// clear and nowhere else; a secret that cannot be unsealed fails the
// container with the variable named (the reference only warns).
func TestSealedEnv(t *testing.T) {
	const plain = "plaintext-marker-5d2e"
	unseal := func(_ context.Context, s string) ([]byte, error) {
		if s == "sealed.good" {
			return []byte(plain), nil
		}
		return nil, errors.New("signature does not verify")
	}
	e := newEnvWith(t, func(o *agent.Options) { o.Unseal = unseal })
	e.sandbox(t, "sb")
	spec := e.spec(t, "sh", "-c", `echo "$DB_PASSWORD"`)
	spec.Process.Env = append(spec.Process.Env, "DB_PASSWORD=sealed.good")
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if got := e.readAll(t, "c", "", true); got != plain+"\n" {
		t.Fatalf("container saw %q", got)
	}
	bad := e.spec(t, "true")
	bad.Process.Env = append(bad.Process.Env, "API_KEY=sealed.tampered")
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "d", OCI: bad})
	wantCode(t, err, codes.Internal, "API_KEY")
	proc := e.spec(t, "true").Process
	proc.Env = append(proc.Env, "TOKEN=sealed.tampered")
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x", Process: proc})
	wantCode(t, err, codes.Internal, "TOKEN")
	if strings.Contains(e.logs.String(), plain) {
		t.Fatal("the unsealed value reached the agent log")
	}
}

func TestSealedEnvWithoutCDH(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	spec := e.spec(t, "true")
	spec.Process.Env = append(spec.Process.Env, "X=sealed.abc")
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec})
	wantCode(t, err, codes.FailedPrecondition, "sealed secret")
}

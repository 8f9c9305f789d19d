package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/cova-project/cova/agent"
	pb "github.com/cova-project/cova/protocols/grpc"
)

type recorder struct {
	mu     sync.Mutex
	events []string // "op content"
	fail   error
}

func (r *recorder) measure(_ context.Context, op, content string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.events = append(r.events, op+" "+content)
	return nil
}

// TestStartAndExecAreMeasured: the agent records what it is about to run
// (args, env names with value digests, never values) before it runs it, and
// runs nothing when the measurement fails.
func TestStartAndExecAreMeasured(t *testing.T) {
	rec := &recorder{}
	e := newEnvWith(t, func(o *agent.Options) { o.Measure = rec.measure })
	e.sandbox(t, "sb")
	const secret = "measured-secret-value-71c3"
	spec := e.spec(t, "sleep", "1000")
	spec.Process.Env = append(spec.Process.Env, "TOKEN="+secret)
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	proc := e.spec(t, "true").Process
	if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x1", Process: proc}); err != nil {
		t.Fatal(err)
	}
	if len(rec.events) != 2 || !strings.HasPrefix(rec.events[0], "StartContainer ") || !strings.HasPrefix(rec.events[1], "ExecProcess ") {
		t.Fatalf("events = %q", rec.events)
	}
	for _, ev := range rec.events {
		if strings.Contains(ev, secret) {
			t.Fatal("an env value was measured in clear")
		}
	}
	var start struct {
		ContainerID string   `json:"container_id"`
		Args        []string `json:"args"`
		Env         []struct {
			Name, SHA256 string
		} `json:"env"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(rec.events[0], "StartContainer ")), &start); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(secret))
	found := false
	for _, v := range start.Env {
		if v.Name == "TOKEN" && v.SHA256 == hex.EncodeToString(sum[:]) {
			found = true
		}
	}
	if start.ContainerID != "c" || strings.Join(start.Args, " ") != "sleep 1000" || !found {
		t.Fatalf("StartContainer event = %+v", start)
	}

	// A failing measurement runs nothing.
	rec.fail = errors.New("register unavailable")
	_, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x2", Process: proc})
	wantCode(t, err, codes.Internal, "nothing was started")
	_, err = e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: "x2"})
	wantCode(t, err, codes.NotFound, "x2")
}

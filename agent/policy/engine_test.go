package policy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	pb "github.com/cova-project/cova/protocols/grpc"
)

func TestNewRejects(t *testing.T) {
	cases := []struct {
		name, policy, want string
	}{
		{"syntax error", "package agent_policy\nCreateContainerRequest := {", "parse"},
		{"wrong package", "package other\ndefault CreateContainerRequest := true\n", "want agent_policy"},
		{"no package", "default CreateContainerRequest := true\n", "parse"},
		{"unsafe var", "package agent_policy\nCreateContainerRequest if { x }\n", "unsafe"},
		{"http.send", "package agent_policy\nCreateContainerRequest if { http.send({\"method\": \"get\", \"url\": \"http://10.0.2.2/\"}).status_code == 200 }\n", "http.send"},
		{"net.lookup_ip_addr", "package agent_policy\nCreateContainerRequest if { net.lookup_ip_addr(\"kbs\") }\n", "net.lookup_ip_addr"},
		{"opa.runtime", "package agent_policy\nCreateContainerRequest if { opa.runtime().env.HOME }\n", "opa.runtime"},
		{"json.verify_schema", "package agent_policy\nCreateContainerRequest if { json.verify_schema({}) }\n", "json.verify_schema"},
		{"too large", "package agent_policy\n#" + strings.Repeat("x", MaxPolicySize), "exceeds"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.policy, Options{})
			if err == nil {
				t.Fatal("New succeeded")
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not INVALID_ARGUMENT", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestNewAcceptsRegoV0(t *testing.T) {
	// regorus (kata) defaults to Rego v0; genpolicy output imports the
	// future keywords, older hand-written policies do not use them at all.
	for name, policy := range map[string]string{
		"v0 plain": "package agent_policy\ndefault CreateContainerRequest = false\nCreateContainerRequest { input.container_id == \"c1\" }\n",
		"v0 future keywords": "package agent_policy\nimport future.keywords.in\nimport future.keywords.if\n" +
			"default CreateContainerRequest := false\nCreateContainerRequest if { input.container_id in {\"c1\"} }\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := mustEngine(t, policy, Options{})
			ctx := context.Background()
			if err := e.Allow(ctx, "CreateContainer", &pb.CreateContainerRequest{ContainerId: "c1"}); err != nil {
				t.Errorf("c1: %v", err)
			}
			if err := e.Allow(ctx, "CreateContainer", &pb.CreateContainerRequest{ContainerId: "c2"}); !errdefs.IsPermissionDenied(err) {
				t.Errorf("c2: %v, want PERMISSION_DENIED", err)
			}
		})
	}
}

// TestTypeErrorsTolerated: OPA type-checks refs into constants, regorus
// does not; genpolicy rules refer to policy_data keys a settings file may
// not emit. Such a policy loads, and the ref is undefined at evaluation.
func TestTypeErrorsTolerated(t *testing.T) {
	policy := `package agent_policy
policy_data := {"common": {}}
default CreateContainerRequest := false
CreateContainerRequest if { policy_data.cluster_config.guest_pull }
default StartContainerRequest := true
`
	log, buf := debugLogger()
	e := mustEngine(t, policy, Options{Logger: log})
	if err := e.Allow(context.Background(), "CreateContainer", &pb.CreateContainerRequest{}); !errdefs.IsPermissionDenied(err) {
		t.Errorf("CreateContainer: %v, want PERMISSION_DENIED", err)
	}
	if err := e.Allow(context.Background(), "StartContainer", &pb.StartContainerRequest{}); err != nil {
		t.Errorf("StartContainer: %v", err)
	}
	if !strings.Contains(buf.String(), "without type checking") {
		t.Error("no warning about skipped type checks")
	}
}

func TestBooleanResults(t *testing.T) {
	e := mustEngine(t, `package agent_policy
default StartContainerRequest := true
default ExecProcessRequest := false
SignalProcessRequest := input.signal == 15
`, Options{})
	ctx := context.Background()
	cases := []struct {
		rpc     string
		req     any
		allowed bool
	}{
		{"StartContainer", &pb.StartContainerRequest{ContainerId: "c"}, true},
		{"ExecProcess", &pb.ExecProcessRequest{ContainerId: "c"}, false},
		{"SignalProcess", &pb.SignalProcessRequest{Signal: 15}, true},
		{"SignalProcess", &pb.SignalProcessRequest{Signal: 9}, false},
	}
	for _, tc := range cases {
		err := e.Allow(ctx, tc.rpc, tc.req)
		if tc.allowed && err != nil {
			t.Errorf("%s %v: %v", tc.rpc, tc.req, err)
		}
		if !tc.allowed {
			var d *DeniedError
			if !errors.As(err, &d) || !errdefs.IsPermissionDenied(err) {
				t.Errorf("%s %v: %v, want a PERMISSION_DENIED DeniedError", tc.rpc, tc.req, err)
			}
		}
	}
}

func TestUndefinedDenies(t *testing.T) {
	e := mustEngine(t, "package agent_policy\ndefault StartContainerRequest := true\n", Options{})
	err := e.Allow(context.Background(), "CreateContainer", &pb.CreateContainerRequest{})
	if !errdefs.IsPermissionDenied(err) {
		t.Fatalf("got %v, want PERMISSION_DENIED", err)
	}
	want := "CreateContainerRequest is blocked by policy: no rule and no default for CreateContainerRequest"
	if err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestBadResultIsInternal(t *testing.T) {
	for name, rule := range map[string]string{
		"string":            `StartContainerRequest := "yes"`,
		"object no allowed": `StartContainerRequest := {"ops": []}`,
		"bad ops":           `StartContainerRequest := {"allowed": true, "ops": [{"op": "frob", "path": "/pstate/x"}]}`,
		"conflict":          "StartContainerRequest := true if input.container_id != \"\"\nStartContainerRequest := false if input.container_id != \"x\"",
	} {
		t.Run(name, func(t *testing.T) {
			e := mustEngine(t, "package agent_policy\n"+rule+"\n", Options{})
			err := e.Allow(context.Background(), "StartContainer", &pb.StartContainerRequest{ContainerId: "c"})
			if err == nil || errdefs.IsPermissionDenied(err) || !errdefs.IsInternal(err) {
				t.Errorf("got %v, want an INTERNAL error", err)
			}
		})
	}
}

// statefulPolicy records containers in pstate the way genpolicy's rules do.
const statefulPolicy = `package agent_policy

default CreateContainerRequest := false
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": idx}]} if {
	some idx, name in ["web", "sidecar"]
	input.OCI.Annotations["io.kubernetes.cri.container-name"] == name
	not input.container_id in object.keys(data.pstate)
}

default RemoveContainerRequest := true
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}]}

default ExecProcessRequest := false
ExecProcessRequest if data.pstate[input.container_id] == 1

default SetPolicyRequest := true
`

func createReq(id, name string) *pb.CreateContainerRequest {
	return &pb.CreateContainerRequest{ContainerId: id, OCI: &pb.Spec{Annotations: map[string]string{"io.kubernetes.cri.container-name": name}}}
}

func TestStateAcrossCalls(t *testing.T) {
	e := mustEngine(t, statefulPolicy, Options{})
	ctx := context.Background()
	step := func(rpc string, req any, wantAllowed bool) {
		t.Helper()
		err := e.Allow(ctx, rpc, req)
		if wantAllowed && err != nil {
			t.Fatalf("%s: %v", rpc, err)
		}
		if !wantAllowed && !errdefs.IsPermissionDenied(err) {
			t.Fatalf("%s: %v, want PERMISSION_DENIED", rpc, err)
		}
	}
	step("CreateContainer", createReq("c1", "web"), true)
	step("CreateContainer", createReq("c2", "sidecar"), true)
	if got := e.State(); len(got) != 2 || got["c1"] == nil || got["c2"] == nil {
		t.Fatalf("state %v", got)
	}
	step("CreateContainer", createReq("c1", "web"), false) // already known
	step("CreateContainer", createReq("c3", "evil"), false)
	step("ExecProcess", &pb.ExecProcessRequest{ContainerId: "c2"}, true)
	step("ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1"}, false)

	step("RemoveContainer", &pb.RemoveContainerRequest{ContainerId: "c2"}, true)
	if got := e.State(); len(got) != 1 || got["c2"] != nil {
		t.Fatalf("state after remove %v", got)
	}
	step("ExecProcess", &pb.ExecProcessRequest{ContainerId: "c2"}, false)

	// Removing an unknown container: the remove op fails, and kata then
	// fails the request with an internal error.
	err := e.Allow(ctx, "RemoveContainer", &pb.RemoveContainerRequest{ContainerId: "nope"})
	if !errdefs.IsInternal(err) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("remove unknown: %v, want INTERNAL naming the path", err)
	}
	if got := e.State(); len(got) != 1 {
		t.Errorf("failed patch changed state: %v", got)
	}

	// State() is a copy.
	e.State()["c9"] = 1
	if _, ok := e.State()["c9"]; ok {
		t.Error("State() exposes the engine's map")
	}

	// SetPolicy resets the state, as kata's does.
	if err := e.SetPolicy(statefulPolicy); err != nil {
		t.Fatal(err)
	}
	if got := e.State(); len(got) != 0 {
		t.Errorf("state after SetPolicy %v", got)
	}
	step("CreateContainer", createReq("c1", "web"), true)
}

// TestStateConcurrent: two racing CreateContainer calls for one id must
// not both pass the "not yet in state" check.
func TestStateConcurrent(t *testing.T) {
	e := mustEngine(t, statefulPolicy, Options{})
	var allowed atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if e.Allow(context.Background(), "CreateContainer", createReq("same", "web")) == nil {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 1 {
		t.Errorf("%d concurrent creations of one container allowed, want 1", allowed.Load())
	}
}

func TestSetPolicy(t *testing.T) {
	e := mustEngine(t, AllowAllPolicy(), Options{})
	ctx := context.Background()
	if err := e.SetPolicy("package agent_policy\nnot valid rego {"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad policy: %v, want INVALID_ARGUMENT", err)
	}
	if err := e.Allow(ctx, "ExecProcess", &pb.ExecProcessRequest{}); err != nil {
		t.Fatalf("a rejected SetPolicy changed the policy: %v", err)
	}
	if err := e.SetPolicy(CocoDefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	if err := e.Allow(ctx, "ExecProcess", &pb.ExecProcessRequest{}); !errdefs.IsPermissionDenied(err) {
		t.Errorf("after SetPolicy(coco-default), ExecProcess: %v", err)
	}
	if err := e.Allow(ctx, "SetPolicy", &pb.SetPolicyRequest{Policy: AllowAllPolicy()}); !errdefs.IsPermissionDenied(err) {
		t.Errorf("coco-default allowed SetPolicy: %v", err)
	}
}

func TestPrintInDenial(t *testing.T) {
	e := mustEngine(t, `package agent_policy
default ExecProcessRequest := false
ExecProcessRequest if {
	print("ExecProcessRequest: checking", input.container_id)
	input.container_id == "allowed"
	print("never reached")
}
default StartContainerRequest := false
`, Options{})
	ctx := context.Background()
	err := e.Allow(ctx, "ExecProcess", &pb.ExecProcessRequest{ContainerId: "c7"})
	want := "ExecProcessRequest is blocked by policy: ExecProcessRequest: checking c7"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
	// No print output: the message names the rule.
	err = e.Allow(ctx, "StartContainer", &pb.StartContainerRequest{})
	want = "StartContainerRequest is blocked by policy: data.agent_policy.StartContainerRequest is false"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

func TestLongPrintIsOneLine(t *testing.T) {
	e := mustEngine(t, `package agent_policy
default ExecProcessRequest := false
ExecProcessRequest if {
	print("line one\nline two", concat("", [x | some i in numbers.range(1, 400); x := "ab"]))
	false
}
`, Options{})
	err := e.Allow(context.Background(), "ExecProcess", &pb.ExecProcessRequest{})
	msg := err.Error()
	if strings.Contains(msg, "\n") || len(msg) > maxReasonLen+100 || !strings.Contains(msg, "line one line two") {
		t.Errorf("message not one capped line (%d bytes): %q", len(msg), msg)
	}
}

// quotedMarker is an env value that print output shows escaped.
const quotedMarker = "an0ther-marker-4e2d"

// TestRedaction: env values never reach the log or the denial, even when
// the policy prints the whole input.
func TestRedaction(t *testing.T) {
	policy := `package agent_policy
default CreateContainerRequest := false
CreateContainerRequest if {
	print("CreateContainerRequest: input =", input)
	some e in input.OCI.Process.Env
	print("checking env", e)
	false
}
default ExecProcessRequest := false
ExecProcessRequest if {
	print("ExecProcessRequest: input =", input)
	false
}
default WriteStreamRequest := false
`
	log, buf := debugLogger()
	e := mustEngine(t, policy, Options{Logger: log})
	ctx := context.Background()
	req := sampleCreateContainer("c1")
	req.OCI.Hooks = &pb.Hooks{Prestart: []*pb.Hook{{Path: "/bin/true", Env: []string{"HOOK_SECRET=" + secretMarker + "-hook"}}}}
	err := e.Allow(ctx, "CreateContainer", req)
	if err == nil {
		t.Fatal("allowed")
	}
	exec := &pb.ExecProcessRequest{ContainerId: "c1", Process: &pb.Process{Args: []string{"sh"}, Env: []string{
		"QUOTED=" + quotedMarker + "\"\\q\u00e9\x01",
	}}}
	err2 := e.Allow(ctx, "ExecProcess", exec)
	if err2 == nil {
		t.Fatal("allowed")
	}
	err3 := e.Allow(ctx, "WriteStdin", &pb.WriteStreamRequest{ContainerId: "c1", Data: []byte(secretMarker)})
	if err3 == nil {
		t.Fatal("allowed")
	}
	logs := buf.String()
	for _, s := range []string{logs, err.Error(), err2.Error()} {
		if strings.Contains(s, secretMarker) || strings.Contains(s, quotedMarker) {
			t.Errorf("secret leaked: %s", s)
		}
	}
	// The debug log has the inputs, with the env keys still visible.
	for _, want := range []string{"policy input", "API_TOKEN=<redacted>", "HOOK_SECRET=<redacted>", "HOSTNAME=<redacted>", "QUOTED=<redacted>", `\"data\":\"<24 bytes>\"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("debug log lacks %q", want)
		}
	}
	// The byte payload of WriteStdin is not logged as numbers either.
	if strings.Contains(logs, "[115,51,99") {
		t.Error("stdin bytes logged")
	}
}

func TestReadStreamDrain(t *testing.T) {
	e := mustEngine(t, CocoDefaultPolicy(), Options{})
	ctx := context.Background()
	for _, rpc := range []string{"ReadStdout", "ReadStderr"} {
		err := e.Allow(ctx, rpc, &pb.ReadStreamRequest{ContainerId: "c", Len: 4096})
		if !errors.Is(err, ErrDenyDrain) || !errdefs.IsPermissionDenied(err) {
			t.Errorf("%s: %v, want ErrDenyDrain and PERMISSION_DENIED", rpc, err)
		}
	}
	err := e.Allow(ctx, "WriteStdin", &pb.WriteStreamRequest{})
	if errors.Is(err, ErrDenyDrain) || !errdefs.IsPermissionDenied(err) {
		t.Errorf("WriteStdin: %v, want PERMISSION_DENIED without ErrDenyDrain", err)
	}
}

func TestAllowBadArguments(t *testing.T) {
	e := mustEngine(t, AllowAllPolicy(), Options{})
	ctx := context.Background()
	if err := e.Allow(ctx, "CreateContainer", "not a message"); err == nil {
		t.Error("non-proto request allowed")
	}
	if err := e.Allow(ctx, "CreateContainer", (*pb.CreateContainerRequest)(nil)); err == nil {
		t.Error("nil request allowed")
	}
	// The rpc and its request type must agree, or the wrong rule decides.
	if err := e.Allow(ctx, "ExecProcess", &pb.StartContainerRequest{}); err == nil {
		t.Error("ExecProcess with a StartContainerRequest allowed")
	}
}

func TestAllowRequestsFailingPolicy(t *testing.T) {
	log, buf := debugLogger()
	e := mustEngine(t, "package agent_policy\nAllowRequestsFailingPolicy := true\ndefault ExecProcessRequest := false\n", Options{Logger: log})
	ctx := context.Background()
	if err := e.Allow(ctx, "ExecProcess", &pb.ExecProcessRequest{}); err != nil {
		t.Errorf("false rule: %v", err)
	}
	if err := e.Allow(ctx, "CreateContainer", &pb.CreateContainerRequest{}); err != nil {
		t.Errorf("undefined rule: %v", err)
	}
	if !strings.Contains(buf.String(), "AllowRequestsFailingPolicy") {
		t.Error("no warning logged")
	}
}

func TestContextCanceled(t *testing.T) {
	e := mustEngine(t, `package agent_policy
CreateContainerRequest if {
	count([x | some x in numbers.range(1, 100000000)]) > 0
}
`, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Allow(ctx, "CreateContainer", &pb.CreateContainerRequest{}); err == nil {
		t.Error("canceled evaluation allowed")
	}
}

// TestCheckPulledImage: the PulledImage extension pins a tag to the digest
// actually pulled; policies without the rule (every kata policy) allow.
func TestCheckPulledImage(t *testing.T) {
	const want = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	pinned := AllowAllPolicy() + `
pins := {"registry.example/app:1.0": "` + want + `"}

PulledImage if {
	print("PulledImage:", input.image, "pulled as", input.digest, "for", input.container_id)
	pins[input.image] == input.digest
}
`
	ctx := context.Background()
	cases := []struct {
		name, policy, image, digest string
		allow                       bool
		reason                      string
	}{
		{"pinned digest", pinned, "registry.example/app:1.0", want, true, ""},
		{"tag moved", pinned, "registry.example/app:1.0", "sha256:" + strings.Repeat("2", 64), false,
			"PulledImage is blocked by policy: PulledImage: registry.example/app:1.0 pulled as sha256:2222"},
		{"image not pinned", pinned, "registry.example/other:1.0", want, false, "registry.example/other:1.0"},
		{"no rule (kata policies)", AllowAllPolicy(), "anything:latest", want, true, ""},
		{"rule false by default", "package agent_policy\ndefault PulledImage := false\n", "a:b", want, false, "data.agent_policy.PulledImage is false"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := mustEngine(t, tc.policy, Options{})
			err := e.CheckPulledImage(ctx, "c1", tc.image, tc.digest)
			if tc.allow {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want PERMISSION_DENIED containing %q", err, tc.reason)
			}
		})
	}
	// An evaluation error is INTERNAL, never an allow.
	e := mustEngine(t, "package agent_policy\nPulledImage := true if input.image\nPulledImage := false if input.digest\n", Options{})
	if err := e.CheckPulledImage(ctx, "c1", "a:b", want); err == nil || errdefs.IsPermissionDenied(err) {
		t.Fatalf("failing rule: %v", err)
	}
}

// TestStatePatchKeepsPstateAnObject: a decision whose patch would make
// data.pstate a non-object fails (INTERNAL) and leaves the state as it was.
func TestStatePatchKeepsPstateAnObject(t *testing.T) {
	pol := AllowAllPolicy() + `
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate", "value": 9}]} if input.container_id == "evil"
`
	pol = strings.Replace(pol, "default RemoveContainerRequest := true\n", "", 1)
	e := mustEngine(t, pol, Options{})
	if err := e.Allow(context.Background(), "RemoveContainer", &pb.RemoveContainerRequest{ContainerId: "evil"}); err == nil || errdefs.IsPermissionDenied(err) {
		t.Fatalf("a patch replacing pstate with a number: %v; want INTERNAL", err)
	}
	if st := e.State(); st == nil {
		t.Fatal("the state is gone")
	}
}

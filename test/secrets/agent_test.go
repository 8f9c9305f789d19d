package secrets

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/policy"
	"github.com/cova-project/cova/cdh/sealed"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/faults"
)

// Env and file markers that travel from the host in clear.
var (
	ctrEnvSecret  = []byte("CONTAINER-ENV-MARKER-0a9d41")
	execEnvSecret = []byte("EXEC-ENV-MARKER-3f7720")
	failEnvSecret = []byte("FAILING-RPC-ENV-MARKER-c55e")
	copySecret    = []byte("COPYFILE-CONTENT-MARKER-8812")
)

// TestAgentFlows runs the host-facing flows on a real agent (unix socket,
// allow-all Rego policy, the KBS-backed sealed-secret unsealer) at debug
// level and looks for every marker in the agent's log and in every error
// the host received.
func TestAgentFlows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sec := newSecrets()
	for name, v := range map[string][]byte{
		"container env value": ctrEnvSecret, "exec env value": execEnvSecret, "env value of a failing rpc": failEnvSecret,
		"CopyFile content": copySecret, "sealed env plaintext": envSecret, "sealed file plaintext": fileSecret,
	} {
		sec.add(name, v)
	}
	sg := newSigner(t)
	kbsSrv := startKBS(t, sg)
	e := faults.StartAgent(t, func(o *agent.Options, log *slog.Logger) {
		gate, err := policy.New(policy.AllowAllPolicy(), policy.Options{Logger: log.With("component", "policy"), Name: "builtin:allow-all"})
		if err != nil {
			t.Fatal(err)
		}
		o.Gate = gate
		u := &sealed.Unsealer{Resources: resources{newKBSClient(t, kbsSrv, log)}, Logger: log.With("component", "sealed")}
		o.Unseal = u.Unseal
	})
	e.Sandbox(ctx, t, "sb")
	host := func(err error) error { sec.sawErr(err); return err }

	// A container sees its env secrets (proved by their hashes, never
	// printed), and an exec sees its own.
	spec := e.Spec(t, "sh", "-c", `printf %s "$SECRET" | sha256sum; printf %s "$DB_PASSWORD" | sha256sum; read x`)
	spec.Process.Env = append(spec.Process.Env, "SECRET="+string(ctrEnvSecret), "DB_PASSWORD="+sg.vault(t, envSecretPath))
	if err := host(create(ctx, e, "c", spec)); err != nil {
		t.Fatal(err)
	}
	out, err := faults.ReadUntil(ctx, e.C, "c", "", sha256Hex(envSecret))
	if host(err) != nil || !strings.Contains(out, sha256Hex(ctrEnvSecret)) || !strings.Contains(out, sha256Hex(envSecret)) {
		t.Fatalf("the container did not see its secrets: %q, %v", out, err)
	}
	proc := e.Spec(t, "sh", "-c", `printf %s "$TOKEN" | sha256sum`).Process
	proc.Env = append(proc.Env, "TOKEN="+string(execEnvSecret))
	if _, err := e.C.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x1", Process: proc}); host(err) != nil {
		t.Fatal(err)
	}
	if out, err := faults.ReadUntil(ctx, e.C, "c", "x1", sha256Hex(execEnvSecret)); host(err) != nil || !strings.Contains(out, sha256Hex(execEnvSecret)) {
		t.Fatalf("the exec did not see its secret: %q, %v", out, err)
	}
	if _, err := e.C.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: "x1"}); host(err) != nil {
		t.Fatal(err)
	}

	// Failing rpcs carrying secrets answer errors without them.
	bad := e.Spec(t, "true")
	bad.Process.Env = append(bad.Process.Env, "SECRET="+string(failEnvSecret))
	bad.Hooks = &pb.Hooks{Prestart: []*pb.Hook{{Path: "/bin/sh", Env: []string{"K=" + string(failEnvSecret)}}}}
	if _, err := e.C.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "bad", OCI: bad}); host(err) == nil {
		t.Fatal("a spec with hooks was accepted")
	}
	fproc := e.Spec(t, "/no/such/binary").Process
	fproc.Env = append(fproc.Env, "SECRET="+string(failEnvSecret))
	_, err = e.C.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x2", Process: fproc})
	host(err)
	_, err = e.C.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "missing", ExecId: "x3", Process: fproc})
	host(err)
	tampered := e.Spec(t, "true")
	v := sg.vault(t, envSecretPath)
	tampered.Process.Env = append(tampered.Process.Env, "API_KEY="+v[:len(v)-8]+"AAAAAAAA")
	if err := host(create(ctx, e, "tampered", tampered)); err == nil {
		t.Fatal("a sealed secret with a broken signature was accepted")
	}

	// Secret volumes: a sealed file is unsealed for the container; a plain
	// secret file's content is copied, never logged.
	shared := filepath.Join(e.Root, "shared", "containers")
	vol := filepath.Join(shared, "v-secret")
	for _, f := range []struct {
		path string
		mode uint32
		data string
	}{
		{filepath.Join(vol, "..2026_11_27"), 0o40755, ""},
		{filepath.Join(vol, "..2026_11_27", "sealed"), 0o100644, sg.vault(t, fileSecretPath)},
		{filepath.Join(vol, "..2026_11_27", "plain"), 0o100600, string(copySecret)},
		{filepath.Join(vol, "..data"), 0o120777, "..2026_11_27"},
		{filepath.Join(vol, "sealed"), 0o120777, "..data/sealed"},
		{filepath.Join(vol, "plain"), 0o120777, "..data/plain"},
	} {
		_, err := e.C.CopyFile(ctx, &pb.CopyFileRequest{Path: f.path, FileMode: f.mode, DirMode: 0o755, FileSize: int64(len(f.data)), Data: []byte(f.data)})
		if host(err) != nil {
			t.Fatalf("CopyFile %s: %v", f.path, err)
		}
	}
	vspec := e.Spec(t, "sh", "-c", "sha256sum /secrets/sealed /secrets/plain; read x")
	vspec.Mounts = append(vspec.Mounts, &pb.Mount{Destination: "/secrets", Source: vol, Type: "bind", Options: []string{"rbind", "ro"}})
	if err := host(create(ctx, e, "v", vspec)); err != nil {
		t.Fatal(err)
	}
	if out, err := faults.ReadUntil(ctx, e.C, "v", "", sha256Hex(copySecret)); host(err) != nil || !strings.Contains(out, sha256Hex(fileSecret)) {
		t.Fatalf("the container did not see the volume's secrets: %q, %v", out, err)
	}
	for _, cid := range []string{"c", "v"} {
		if _, err := e.C.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: cid, Timeout: 5}); host(err) != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.C.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); host(err) != nil {
		t.Fatal(err)
	}
	sec.check(t, e.Logs.String(), true)
}

func create(ctx context.Context, e *faults.Agent, cid string, spec *pb.Spec) error {
	if _, err := e.C.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: cid, OCI: spec}); err != nil {
		return err
	}
	_, err := e.C.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: cid})
	return err
}

// TestMeasuredEventsCarryNoPlaintextDigest: the runtime measurements of
// StartContainer and ExecProcess go into the AA event log, which is evidence
// (the KBS, and any relying party a workload asks the AA for evidence, sees
// it). An unsalted sha256 of a low-entropy secret is as good as the secret
// to a dictionary attack, so no plaintext digest may be measured.
func TestMeasuredEventsCarryNoPlaintextDigest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sg := newSigner(t)
	kbsSrv := startKBS(t, sg)
	var mu sync.Mutex
	var events []string
	e := faults.StartAgent(t, func(o *agent.Options, log *slog.Logger) {
		u := &sealed.Unsealer{Resources: resources{newKBSClient(t, kbsSrv, log)}, Logger: log.With("component", "sealed")}
		o.Unseal = u.Unseal
		o.Measure = func(_ context.Context, op, content string) error {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, op+" "+content)
			return nil
		}
	})
	e.Sandbox(ctx, t, "sb")
	spec := e.Spec(t, "sh", "-c", "read x")
	sealedValue := sg.vault(t, envSecretPath)
	spec.Process.Env = append(spec.Process.Env, "DB_PASSWORD="+sealedValue)
	if err := create(ctx, e, "c", spec); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	all := strings.Join(events, "\n")
	mu.Unlock()
	if !strings.Contains(all, "StartContainer") {
		t.Fatalf("no StartContainer measurement: %q", all)
	}
	if strings.Contains(all, sha256Hex(envSecret)) {
		t.Fatal("the StartContainer measurement carries sha256 of an unsealed secret's plaintext")
	}
	// What is measured is the value the host sent: the sealed string.
	if !strings.Contains(all, sha256Hex([]byte(sealedValue))) {
		t.Fatalf("the StartContainer measurement lacks the digest of the sealed value: %q", all)
	}
}

package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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

// TestSealedSecretFiles: a Kubernetes secret volume (and a subPath file)
// shared by CopyFile whose content is a sealed secret reaches the container
// unsealed: key -> ..data/key is repointed to ..data/key.unsealed.
func TestSealedSecretFiles(t *testing.T) {
	const plain = "file-plaintext-9a41"
	unseal := func(_ context.Context, s string) ([]byte, error) {
		if s == "sealed.good" {
			return []byte(plain), nil
		}
		return nil, errors.New("bad secret")
	}
	e := newEnvWith(t, func(o *agent.Options) { o.Unseal = unseal })
	e.sandbox(t, "sb")
	shared := filepath.Join(e.root, "shared", "containers")
	vol := filepath.Join(shared, "c-secret")
	copyReq := func(path string, mode uint32, data string) {
		t.Helper()
		if _, err := e.c.CopyFile(e.ctx, &pb.CopyFileRequest{Path: path, FileMode: mode, DirMode: 0o755, FileSize: int64(len(data)), Data: []byte(data)}); err != nil {
			t.Fatalf("CopyFile %s: %v", path, err)
		}
	}
	copyReq(filepath.Join(vol, "..2026_11_27"), 0o40755, "")
	copyReq(filepath.Join(vol, "..2026_11_27", "key"), 0o100644, "sealed.good")
	copyReq(filepath.Join(vol, "..data"), 0o120777, "..2026_11_27")
	copyReq(filepath.Join(vol, "key"), 0o120777, "..data/key")
	copyReq(filepath.Join(shared, "c-token"), 0o100600, "sealed.good")

	spec := e.spec(t, "sh", "-c", "cat /secrets/key; echo; cat /token")
	spec.Mounts = append(spec.Mounts,
		&pb.Mount{Destination: "/secrets", Source: vol, Type: "bind", Options: []string{"rbind", "ro"}},
		&pb.Mount{Destination: "/token", Source: filepath.Join(shared, "c-token"), Type: "bind", Options: []string{"bind", "ro"}},
	)
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if got := e.readAll(t, "c", "", true); got != plain+"\n"+plain {
		t.Fatalf("container read %q", got)
	}
	if target, err := os.Readlink(filepath.Join(vol, "key")); err != nil || target != "..data/key.unsealed" {
		t.Fatalf("key -> %q, %v", target, err)
	}
	// A sealed file that does not unseal fails the container.
	copyReq(filepath.Join(shared, "d-token"), 0o100600, "sealed.bad")
	bad := e.spec(t, "true")
	bad.Mounts = append(bad.Mounts, &pb.Mount{Destination: "/token", Source: filepath.Join(shared, "d-token"), Type: "bind", Options: []string{"bind"}})
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "d", OCI: bad})
	wantCode(t, err, codes.Internal, "OCI.Mounts")
	if strings.Contains(e.logs.String(), plain) {
		t.Fatal("the unsealed value reached the agent log")
	}
}

// Package faults is Cova's fault-injection suite: faults_test.go holds one
// table with every catalogued fault (KBS, registry, unpack, boot probes,
// container processes, host clients) and the outcome each must end in. This
// file is the in-process agent harness the suite shares with test/secrets:
// a real agent (container manager, storage manager, CopyFile, policy gate)
// served over a unix socket and driven through ttrpc, with its log captured.
//
// Test binaries that start containers through it must re-exec as
// libcontainer's init: their TestMain calls libcontainer.Init when
// os.Args[1] == "init" and imports libcontainer/nsenter.
package faults

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/copyfile"
	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/mount"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/testutil"
)

// SyncBuffer is a goroutine-safe log sink.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Agent is a running in-process agent and one ttrpc client of it.
type Agent struct {
	// C and H are the client's AgentService and Health stubs.
	C pb.AgentServiceService
	H pb.HealthService
	// Client is the ttrpc connection behind C and H.
	Client *ttrpc.Client
	// Logs captures every log line of every room at debug level (JSON).
	Logs *SyncBuffer
	// Logger writes to Logs; give it to rooms wired in by Tweak.
	Logger *slog.Logger
	// Rootfs is a busybox root filesystem for containers.
	Rootfs string
	// Root is the agent's Kata root (shared dir under it).
	Root string
	// Sock is the unix socket the agent serves on.
	Sock string
}

// noMounter refuses every mount: these agents get no real storages.
type noMounter struct{}

func (noMounter) Mount(string, string, string, uintptr, string) error {
	return fmt.Errorf("mounts disabled in this test")
}
func (noMounter) Unmount(string, int) error { return nil }

// StartAgent builds the agent as cmd/cova-agent does in host mode, with every
// room logging at debug level into Agent.Logs; tweak may change the options
// (Gate, Unseal, Measure) before the agent is built. It needs root and a
// static busybox (skipped outside CI otherwise). The agent and the client
// stop when the test ends.
func StartAgent(t testing.TB, tweak func(o *agent.Options, log *slog.Logger)) *Agent {
	t.Helper()
	testutil.RequireRoot(t)
	rootfs := testutil.BusyboxRootfs(t)
	dir := t.TempDir()
	logs := &SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cm, err := container.New(container.Options{StateRoot: filepath.Join(dir, "state"), Logger: log.With("component", "container")})
	if err != nil {
		t.Fatal(err)
	}
	kroot := filepath.Join(dir, "kata")
	sm, err := mount.New(mount.Options{Logger: log.With("component", "storage"), AllowedRoots: []string{kroot}, Mounter: noMounter{}})
	if err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(kroot, "shared", "containers")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	cp, err := copyfile.New(shared, log.With("component", "copyfile"))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	o := agent.Options{
		Logger: log.With("component", "agent"), Root: kroot, Containers: cm, Storage: sm, Copier: cp,
		CgroupParent: "cova-test/" + name + "-" + filepath.Base(dir), ExecGrace: 100 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&o, log)
	}
	a, err := agent.New(o)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = a.Serve(ctx, l)
	}()
	env := &Agent{Logs: logs, Logger: log, Rootfs: rootfs, Root: kroot, Sock: sock}
	env.Client, env.C, env.H = env.Dial(t)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		_ = a.Shutdown(sctx)
		cancel()
		<-served
	})
	return env
}

// Dial opens another client connection (a second shim, or the same shim
// after a reconnect); it is closed when the test ends.
func (e *Agent) Dial(t testing.TB) (*ttrpc.Client, pb.AgentServiceService, pb.HealthService) {
	t.Helper()
	conn, err := net.Dial("unix", e.Sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { _ = c.Close() })
	return c, pb.NewAgentServiceClient(c), pb.NewHealthClient(c)
}

// Spec is an OCI spec (as the protocol carries it) running args in the
// busybox root, without its own network namespace or hostname.
func (e *Agent) Spec(t testing.TB, args ...string) *pb.Spec {
	t.Helper()
	s := testutil.Spec(e.Rootfs, args...)
	s.Linux.CgroupsPath = ""
	s.Hostname = ""
	ns := s.Linux.Namespaces[:0]
	for _, n := range s.Linux.Namespaces {
		if n.Type != "network" {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	g, err := ocispec.FromSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Sandbox creates the sandbox.
func (e *Agent) Sandbox(ctx context.Context, t testing.TB, id string) {
	t.Helper()
	if _, err := e.C.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: id, Hostname: "cova-test"}); err != nil {
		t.Fatal(err)
	}
}

// Run creates and starts container cid with spec.
func (e *Agent) Run(ctx context.Context, t testing.TB, cid string, spec *pb.Spec) {
	t.Helper()
	if _, err := e.C.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: cid, OCI: spec}); err != nil {
		t.Fatalf("CreateContainer %s: %v", cid, err)
	}
	if _, err := e.C.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("StartContainer %s: %v", cid, err)
	}
}

// ReadUntil reads stdout of (cid, eid) through c until it holds want or
// the stream ends, and returns what it read.
func ReadUntil(ctx context.Context, c pb.AgentServiceService, cid, eid, want string) (string, error) {
	var b strings.Builder
	for !strings.Contains(b.String(), want) {
		r, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 4096})
		if err != nil {
			return b.String(), fmt.Errorf("ReadStdout %s/%s: %w", cid, eid, err)
		}
		if len(r.Data) == 0 {
			return b.String(), nil
		}
		b.Write(r.Data)
	}
	return b.String(), nil
}

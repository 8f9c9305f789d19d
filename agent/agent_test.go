package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/copyfile"
	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/mount"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/testutil"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	os.Exit(m.Run())
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	client *ttrpc.Client
	c      pb.AgentServiceService
	h      pb.HealthService
	logs   *syncBuffer
	rootfs string
	root   string
	ctx    context.Context
}

type panicGate struct{ method string }

func (g panicGate) Allow(_ context.Context, method string, _ any) error {
	if method == g.method {
		panic("test panic in " + method)
	}
	return nil
}

func newEnv(t *testing.T, gate agent.Gate) *env {
	t.Helper()
	return newEnvWith(t, func(o *agent.Options) { o.Gate = gate })
}

func newEnvWith(t *testing.T, tweak func(*agent.Options)) *env {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cm, err := container.New(container.Options{StateRoot: filepath.Join(dir, "state"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	kroot := filepath.Join(dir, "kata")
	sm, err := mount.New(mount.Options{Logger: log, AllowedRoots: []string{kroot}, Mounter: &noMounter{}})
	if err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(kroot, "shared", "containers")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	cp, err := copyfile.New(shared, log)
	if err != nil {
		t.Fatal(err)
	}
	o := agent.Options{
		Logger: log, Root: kroot, Containers: cm, Storage: sm, Copier: cp,
		CgroupParent: "cova-test/" + strings.ReplaceAll(t.Name(), "/", "_") + "-" + filepath.Base(dir), ExecGrace: 100 * time.Millisecond,
	}
	tweak(&o)
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
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		_ = a.Shutdown(context.Background())
		client.Close()
		cancel()
		<-served
	})
	return &env{
		client: client, c: pb.NewAgentServiceClient(client), h: pb.NewHealthClient(client), logs: logs,
		rootfs: testutil.BusyboxRootfs(t), root: kroot, ctx: context.Background(),
	}
}

// noMounter refuses every mount: agent tests do not need real storages.
type noMounter struct{}

func (noMounter) Mount(string, string, string, uintptr, string) error {
	return fmt.Errorf("mounts disabled in this test")
}
func (noMounter) Unmount(string, int) error { return nil }

func (e *env) spec(t *testing.T, args ...string) *pb.Spec {
	t.Helper()
	s := testutil.Spec(e.rootfs, args...)
	s.Linux.CgroupsPath = ""
	s.Hostname = "" // the sandbox's shared UTS namespace names the host
	var ns = s.Linux.Namespaces[:0]
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

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	s, _ := status.FromError(err)
	if err == nil || s.Code() != code {
		t.Fatalf("want %v, got %v", code, err)
	}
	if contains != "" && !strings.Contains(s.Message(), contains) {
		t.Fatalf("message %q does not name %q", s.Message(), contains)
	}
}

func (e *env) readAll(t *testing.T, cid, eid string, stdout bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	var b strings.Builder
	for {
		req := &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 4096}
		var r *pb.ReadStreamResponse
		var err error
		if stdout {
			r, err = e.c.ReadStdout(ctx, req)
		} else {
			r, err = e.c.ReadStderr(ctx, req)
		}
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		if len(r.Data) == 0 {
			return b.String()
		}
		b.Write(r.Data)
	}
}

func (e *env) sandbox(t *testing.T, id string) {
	t.Helper()
	if _, err := e.c.CreateSandbox(e.ctx, &pb.CreateSandboxRequest{SandboxId: id, Hostname: "cova-test", Dns: []string{"nameserver 10.0.2.3"}}); err != nil {
		t.Fatal(err)
	}
}

func TestHealth(t *testing.T) {
	e := newEnv(t, nil)
	r, err := e.h.Check(e.ctx, &pb.CheckRequest{})
	if err != nil || r.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("check = %v, %v", r, err)
	}
	v, err := e.h.Version(e.ctx, &pb.CheckRequest{})
	if err != nil || v.GrpcVersion != agent.APIVersion || v.AgentVersion == "" {
		t.Fatalf("version = %v, %v", v, err)
	}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t, nil)
	// No sandbox yet.
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: e.spec(t, "true")})
	wantCode(t, err, codes.FailedPrecondition, "CreateSandbox")
	e.sandbox(t, "sb1")
	_, err = e.c.CreateSandbox(e.ctx, &pb.CreateSandboxRequest{SandboxId: "sb2"})
	wantCode(t, err, codes.AlreadyExists, "")

	const marker = "cova-secret-marker-8d1f"
	spec := e.spec(t, "sh", "-c", "echo hi; echo oops >&2; hostname; exit 3")
	spec.Process.Env = append(spec.Process.Env, "SECRET="+marker)
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
	wantCode(t, err, codes.AlreadyExists, "")
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "nope"})
	wantCode(t, err, codes.NotFound, "nope")
	// kata addresses the init process with exec_id "" or with the container id
	if got := e.readAll(t, "c1", "c1", true); got != "hi\ncova-test\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := e.readAll(t, "c1", "", false); got != "oops\n" {
		t.Errorf("stderr = %q", got)
	}
	w, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c1"})
	if err != nil || w.Status != 3 {
		t.Fatalf("wait = %v, %v", w, err)
	}
	st, err := e.c.StatsContainer(e.ctx, &pb.StatsContainerRequest{ContainerId: "c1"})
	if err != nil || st.CgroupStats == nil {
		t.Fatalf("stats = %v, %v", st, err)
	}
	if _, err := e.c.RemoveContainer(e.ctx, &pb.RemoveContainerRequest{ContainerId: "c1", Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.RemoveContainer(e.ctx, &pb.RemoveContainerRequest{ContainerId: "c1"})
	wantCode(t, err, codes.NotFound, "c1")
	if _, err := e.c.DestroySandbox(e.ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.logs.String(), marker) {
		t.Fatal("an env value reached the agent log")
	}
	if !strings.Contains(e.logs.String(), `"container_id":"c1"`) {
		t.Fatal("log lines do not carry the container id")
	}
}

func TestCreateContainerValidation(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	good := e.spec(t, "true")
	cases := []struct {
		name  string
		req   *pb.CreateContainerRequest
		field string
	}{
		{"bad id", &pb.CreateContainerRequest{ContainerId: "../x", OCI: good}, "container_id"},
		{"no spec", &pb.CreateContainerRequest{ContainerId: "c"}, "OCI"},
		{"relative root", &pb.CreateContainerRequest{ContainerId: "c", OCI: func() *pb.Spec { s := e.spec(t, "true"); s.Root.Path = "rootfs"; return s }()}, "OCI.Root.Path"},
		{"ns path", &pb.CreateContainerRequest{ContainerId: "c", OCI: func() *pb.Spec {
			s := e.spec(t, "true")
			s.Linux.Namespaces[0].Path = "/proc/1/ns/mnt"
			return s
		}()}, "Namespaces[0].Path"},
		{"hooks", &pb.CreateContainerRequest{ContainerId: "c", OCI: func() *pb.Spec {
			s := e.spec(t, "true")
			s.Hooks = &pb.Hooks{Prestart: []*pb.Hook{{Path: "/bin/sh"}}}
			return s
		}()}, "OCI.Hooks"},
		{"bad storage driver", &pb.CreateContainerRequest{ContainerId: "c", OCI: good, Storages: []*pb.Storage{{Driver: "9p", MountPoint: e.root + "/x"}}}, "9p"},
		{"bad device", &pb.CreateContainerRequest{ContainerId: "c", OCI: good, Devices: []*pb.Device{{Type: "vfio-pci"}}}, "devices[0].type"},
		{"string user", &pb.CreateContainerRequest{ContainerId: "c", OCI: good, StringUser: &pb.StringUser{Uid: "root"}}, "string_user"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.c.CreateContainer(e.ctx, tc.req)
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
}

func startSleeper(t *testing.T, e *env, id string) {
	t.Helper()
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: e.spec(t, "sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
}

func TestExecStreamsAndSignals(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	startSleeper(t, e, "c")
	proc := e.spec(t, "sh", "-c", "read x; echo got:$x; exit 5").Process
	if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "e1", Process: proc}); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "e1", Process: proc})
	wantCode(t, err, codes.AlreadyExists, "")
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "c", Process: proc})
	wantCode(t, err, codes.AlreadyExists, "init")
	_, err = e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "e2"})
	wantCode(t, err, codes.InvalidArgument, "process")
	wr, err := e.c.WriteStdin(e.ctx, &pb.WriteStreamRequest{ContainerId: "c", ExecId: "e1", Data: []byte("abc\n")})
	if err != nil || wr.Len != 4 {
		t.Fatalf("write stdin = %v, %v", wr, err)
	}
	if _, err := e.c.CloseStdin(e.ctx, &pb.CloseStdinRequest{ContainerId: "c", ExecId: "e1"}); err != nil {
		t.Fatal(err)
	}
	if got := e.readAll(t, "c", "e1", true); got != "got:abc\n" {
		t.Errorf("exec stdout = %q", got)
	}
	w, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: "e1"})
	if err != nil || w.Status != 5 {
		t.Fatalf("exec wait = %v, %v", w, err)
	}
	_, err = e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: "missing"})
	wantCode(t, err, codes.NotFound, "missing")

	// tty exec with resize
	tproc := e.spec(t, "sh", "-c", "sleep 0.2; stty size").Process
	tproc.Terminal = true
	if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "t1", Process: tproc}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.TtyWinResize(e.ctx, &pb.TtyWinResizeRequest{ContainerId: "c", ExecId: "t1", Row: 33, Column: 101}); err != nil {
		t.Fatal(err)
	}
	if got := e.readAll(t, "c", "t1", true); !strings.Contains(got, "33 101") {
		t.Errorf("tty output = %q, want the new size", got)
	}
	_, err = e.c.TtyWinResize(e.ctx, &pb.TtyWinResizeRequest{ContainerId: "c", ExecId: "", Row: 1, Column: 1})
	wantCode(t, err, codes.FailedPrecondition, "terminal")

	_, err = e.c.SignalProcess(e.ctx, &pb.SignalProcessRequest{ContainerId: "c", Signal: 0})
	wantCode(t, err, codes.InvalidArgument, "signal")
	if _, err := e.c.SignalProcess(e.ctx, &pb.SignalProcessRequest{ContainerId: "c", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	w, err = e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c"})
	if err != nil || w.Status != 137 {
		t.Fatalf("init wait after SIGKILL = %v, %v", w, err)
	}
}

func TestPauseResumeUpdate(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	startSleeper(t, e, "c")
	if _, err := e.c.PauseContainer(e.ctx, &pb.PauseContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.ResumeContainer(e.ctx, &pb.ResumeContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.PauseContainer(e.ctx, &pb.PauseContainerRequest{ContainerId: "x"})
	wantCode(t, err, codes.NotFound, "")
	if _, err := e.c.UpdateContainer(e.ctx, &pb.UpdateContainerRequest{ContainerId: "c", Resources: &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 50}}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.UpdateContainer(e.ctx, &pb.UpdateContainerRequest{ContainerId: "c"})
	wantCode(t, err, codes.InvalidArgument, "resources")
}

func TestPanicKeepsServing(t *testing.T) {
	e := newEnv(t, panicGate{method: "GetGuestDetails"})
	_, err := e.c.GetGuestDetails(e.ctx, &pb.GuestDetailsRequest{})
	wantCode(t, err, codes.Internal, "GetGuestDetails")
	if r, err := e.h.Check(e.ctx, &pb.CheckRequest{}); err != nil || r.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("after panic: %v %v", r, err)
	}
	m, err := e.c.GetMetrics(e.ctx, &pb.GetMetricsRequest{})
	if err != nil || !strings.Contains(m.Metrics, "cova_agent_rpc_panics_total 1") {
		t.Fatalf("metrics do not count the panic: %v", err)
	}
}

func TestGuestRPCs(t *testing.T) {
	e := newEnv(t, nil)
	d, err := e.c.GetGuestDetails(e.ctx, &pb.GuestDetailsRequest{MemBlockSize: true})
	if err != nil || d.AgentDetails == nil || len(d.AgentDetails.StorageHandlers) == 0 || d.AgentDetails.InitDaemon {
		t.Fatalf("guest details = %v, %v", d, err)
	}
	_, err = e.c.SetGuestDateTime(e.ctx, &pb.SetGuestDateTimeRequest{Sec: 1, Usec: 0})
	wantCode(t, err, codes.FailedPrecondition, "host mode")
	_, err = e.c.SetGuestDateTime(e.ctx, &pb.SetGuestDateTimeRequest{Sec: 1, Usec: 2_000_000})
	wantCode(t, err, codes.InvalidArgument, "Usec")
	_, err = e.c.OnlineCPUMem(e.ctx, &pb.OnlineCPUMemRequest{NbCpus: 1})
	wantCode(t, err, codes.FailedPrecondition, "host mode")
	if _, err := e.c.ReseedRandomDev(e.ctx, &pb.ReseedRandomDevRequest{Data: []byte("some bytes")}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.ReseedRandomDev(e.ctx, &pb.ReseedRandomDevRequest{})
	wantCode(t, err, codes.InvalidArgument, "data")
	m, err := e.c.GetMetrics(e.ctx, &pb.GetMetricsRequest{})
	if err != nil || !strings.Contains(m.Metrics, "cova_agent_rss_bytes") || !strings.Contains(m.Metrics, `cova_guest_meminfo_bytes{field="MemTotal"}`) {
		t.Fatalf("metrics: %v", err)
	}
	_, err = e.c.UpdateInterface(e.ctx, &pb.UpdateInterfaceRequest{})
	wantCode(t, err, codes.FailedPrecondition, "network")
	_, err = e.c.UpdateRoutes(e.ctx, &pb.UpdateRoutesRequest{})
	wantCode(t, err, codes.FailedPrecondition, "network")
	_, err = e.c.AddARPNeighbors(e.ctx, &pb.AddARPNeighborsRequest{})
	wantCode(t, err, codes.FailedPrecondition, "network")
	ifs, err := e.c.ListInterfaces(e.ctx, &pb.ListInterfacesRequest{})
	if err != nil || len(ifs.Interfaces) == 0 {
		t.Fatalf("list interfaces = %v, %v", ifs, err)
	}
	if _, err := e.c.ListRoutes(e.ctx, &pb.ListRoutesRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, lerr := exec.LookPath("iptables-save"); lerr != nil {
		_, err = e.c.GetIPTables(e.ctx, &pb.GetIPTablesRequest{})
		wantCode(t, err, codes.Unimplemented, "iptables-save")
	} else if r, err := e.c.GetIPTables(e.ctx, &pb.GetIPTablesRequest{}); err != nil || r == nil { // a host without rules prints nothing
		t.Fatalf("GetIPTables = %v, %v", r, err)
	}
	_, err = e.c.SetIPTables(e.ctx, &pb.SetIPTablesRequest{Data: []byte("*filter\nCOMMIT\n")})
	wantCode(t, err, codes.FailedPrecondition, "host mode")
	_, err = e.c.AddSwap(e.ctx, &pb.AddSwapRequest{})
	wantCode(t, err, codes.InvalidArgument, "PCIPath")
	_, err = e.c.AddSwap(e.ctx, &pb.AddSwapRequest{PCIPath: []uint32{2, 0x40}})
	wantCode(t, err, codes.InvalidArgument, "PCIPath[1]")
	_, err = e.c.AddSwap(e.ctx, &pb.AddSwapRequest{PCIPath: []uint32{2, 3}})
	wantCode(t, err, codes.FailedPrecondition, "host mode")
	_, err = e.c.AddSwapPath(e.ctx, &pb.AddSwapPathRequest{Path: "/etc/swap"})
	wantCode(t, err, codes.InvalidArgument, "path")
	_, err = e.c.AddSwapPath(e.ctx, &pb.AddSwapPathRequest{Path: e.root + "/swapfile"})
	wantCode(t, err, codes.FailedPrecondition, "host mode")
	_, err = e.c.MemHotplugByProbe(e.ctx, &pb.MemHotplugByProbeRequest{})
	wantCode(t, err, codes.Unimplemented, "MemHotplugByProbe")
	if _, err := e.c.RemoveStaleVirtiofsShareMounts(e.ctx, &pb.RemoveStaleVirtiofsShareMountsRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.SetPolicy(e.ctx, &pb.SetPolicyRequest{})
	wantCode(t, err, codes.Unimplemented, "SetPolicy")
	_, err = e.c.GetVolumeStats(e.ctx, &pb.VolumeStatsRequest{VolumeGuestPath: "/etc"})
	wantCode(t, err, codes.InvalidArgument, "volume_guest_path")
	if err := os.MkdirAll(filepath.Join(e.root, "vol"), 0o755); err != nil {
		t.Fatal(err)
	}
	vs, err := e.c.GetVolumeStats(e.ctx, &pb.VolumeStatsRequest{VolumeGuestPath: filepath.Join(e.root, "vol")})
	if err != nil || len(vs.Usage) != 2 || vs.Usage[0].Total == 0 {
		t.Fatalf("volume stats = %v, %v", vs, err)
	}
	_, err = e.c.GetDiagnosticData(e.ctx, &pb.GetDiagnosticDataRequest{LogType: "kernel"})
	wantCode(t, err, codes.InvalidArgument, "log_type")
	ctx, cancel := context.WithTimeout(e.ctx, 200*time.Millisecond)
	defer cancel()
	_, err = e.c.GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
	if err == nil {
		t.Fatal("GetOOMEvent returned without an OOM")
	}
}

func TestCopyFile(t *testing.T) {
	e := newEnv(t, nil)
	p := filepath.Join(e.root, "shared", "containers", "c1-hostname")
	if _, err := e.c.CopyFile(e.ctx, &pb.CopyFileRequest{Path: p, FileSize: 5, FileMode: 0o100644, DirMode: 0o755, Data: []byte("host\n")}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "host\n" {
		t.Fatalf("copied file = %q, %v", b, err)
	}
	_, err := e.c.CopyFile(e.ctx, &pb.CopyFileRequest{Path: "/etc/passwd", FileSize: 1, FileMode: 0o100644, Data: []byte("x")})
	wantCode(t, err, codes.InvalidArgument, "path")
}

// TestManyExecsLeaveNothingBehind runs many execs and checks that zombies,
// file descriptors and goroutines return to their baseline.
func TestManyExecsLeaveNothingBehind(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	startSleeper(t, e, "c")
	proc := e.spec(t, "true").Process
	run := func(i int) {
		id := fmt.Sprintf("e%d", i)
		if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: id, Process: proc}); err != nil {
			t.Fatal(err)
		}
		e.readAll(t, "c", id, true)
		e.readAll(t, "c", id, false)
		if w, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: id}); err != nil || w.Status != 0 {
			t.Fatalf("exec %d: %v %v", i, w, err)
		}
	}
	for i := 0; i < 20; i++ { // warm up pools and lazily started goroutines
		run(i)
	}
	time.Sleep(300 * time.Millisecond)
	fds0, gr0 := countFDs(t), runtime.NumGoroutine()
	for i := 20; i < n; i++ {
		run(i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fds, gr, z := countFDs(t), runtime.NumGoroutine(), zombies(t)
		if fds <= fds0+2 && gr <= gr0+2 && z == 0 {
			t.Logf("%d execs: fds %d->%d, goroutines %d->%d, zombies %d", n, fds0, fds, gr0, gr, z)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d execs: fds %d->%d, goroutines %d->%d, zombies %d", n, fds0, fds, gr0, gr, z)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func zombies(t *testing.T) int {
	ents, _ := os.ReadDir("/proc")
	me := fmt.Sprint(os.Getpid())
	n := 0
	for _, d := range ents {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == me {
			n++
		}
	}
	return n
}

func TestOOMEvent(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	spec := e.spec(t, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1")
	spec.Linux.Resources = &pb.LinuxResources{Memory: &pb.LinuxMemory{Limit: 16 << 20}}
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "hog", OCI: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "hog"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	ev, err := e.c.GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
	if err != nil || ev.ContainerId != "hog" {
		t.Fatalf("GetOOMEvent = %v, %v", ev, err)
	}
	w, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: "hog"})
	if err != nil || w.Status != 137 {
		t.Fatalf("OOM-killed container status = %v, %v; want 137", w, err)
	}
}

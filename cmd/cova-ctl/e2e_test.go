package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	gstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cova-project/cova/protocols/grpc"
)

// fakeAgent implements the RPCs cova-ctl's run, exec and a few one-shot
// commands use. The embedded interface is nil: any other RPC panics, which
// the test would notice.
//
// Its one process at a time prints a line on stdout and stderr, then waits
// for stdin to be closed, prints "got: <stdin>" and exits with exitCode; or
// dies from a signal (128+N), unless the signal is SIGTERM and ignoreTerm is
// set.
type fakeAgent struct {
	grpc.AgentServiceService

	exitCode   int32
	ignoreTerm bool
	// exitOnInput makes the process exit once stdin holds this text (a
	// terminal never sends EOF).
	exitOnInput string
	createErr   error
	waiting     chan struct{} // closed when WaitProcess is first called

	mu          sync.Mutex
	calls       []string
	sandbox     *grpc.CreateSandboxRequest
	create      *grpc.CreateContainerRequest
	execReq     *grpc.ExecProcessRequest
	signals     []uint32
	stdin       bytes.Buffer
	copies      []*grpc.CopyFileRequest
	proc        *fakeProc
	waitOnce    sync.Once
	streamIDs   map[string]bool // container/exec ids the stdio calls used
	removedIDs  []string
	stdinClosed bool
	stderrReads int
	resizes     []*grpc.TtyWinResizeRequest
}

type fakeProc struct {
	stdout, stderr chan []byte
	stdinDone      chan struct{}
	closeStdin     sync.Once
	killed         chan uint32
	exited         chan struct{}
	status         int32
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{waiting: make(chan struct{}), streamIDs: map[string]bool{}}
}

func (f *fakeAgent) record(rpc string) {
	f.mu.Lock()
	f.calls = append(f.calls, rpc)
	f.mu.Unlock()
}

func (f *fakeAgent) startProc() {
	p := &fakeProc{
		stdout:    make(chan []byte, 8),
		stderr:    make(chan []byte, 8),
		stdinDone: make(chan struct{}),
		killed:    make(chan uint32, 1),
		exited:    make(chan struct{}),
	}
	f.mu.Lock()
	f.proc = p
	f.mu.Unlock()
	go func() {
		p.stdout <- []byte("hello from stdout\n")
		p.stderr <- []byte("warning on stderr\n")
		select {
		case <-p.stdinDone:
			f.mu.Lock()
			in := f.stdin.String()
			f.mu.Unlock()
			p.stdout <- []byte("got: " + in + "\n")
			p.status = f.exitCode
		case sig := <-p.killed:
			p.status = 128 + int32(sig)
		}
		close(p.stdout)
		close(p.stderr)
		close(p.exited)
	}()
}

func (f *fakeAgent) getProc() *fakeProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.proc
}

func (f *fakeAgent) CreateSandbox(_ context.Context, r *grpc.CreateSandboxRequest) (*emptypb.Empty, error) {
	f.record("CreateSandbox")
	f.mu.Lock()
	f.sandbox = r
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) DestroySandbox(context.Context, *grpc.DestroySandboxRequest) (*emptypb.Empty, error) {
	f.record("DestroySandbox")
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) CreateContainer(_ context.Context, r *grpc.CreateContainerRequest) (*emptypb.Empty, error) {
	f.record("CreateContainer")
	f.mu.Lock()
	f.create = r
	f.mu.Unlock()
	if f.createErr != nil {
		return nil, f.createErr
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) StartContainer(_ context.Context, r *grpc.StartContainerRequest) (*emptypb.Empty, error) {
	f.record("StartContainer")
	if r.ContainerId == "missing" {
		return nil, gstatus.Errorf(codes.NotFound, "container %s not found", r.ContainerId)
	}
	f.startProc()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) ExecProcess(_ context.Context, r *grpc.ExecProcessRequest) (*emptypb.Empty, error) {
	f.record("ExecProcess")
	f.mu.Lock()
	f.execReq = r
	f.mu.Unlock()
	f.startProc()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) noteStream(cid, eid string) {
	f.mu.Lock()
	f.streamIDs[cid+"/"+eid] = true
	f.mu.Unlock()
}

func readFrom(ctx context.Context, ch chan []byte) (*grpc.ReadStreamResponse, error) {
	select {
	case d, ok := <-ch:
		if !ok {
			return &grpc.ReadStreamResponse{}, nil // end of stream
		}
		return &grpc.ReadStreamResponse{Data: d}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) ReadStdout(ctx context.Context, r *grpc.ReadStreamRequest) (*grpc.ReadStreamResponse, error) {
	f.noteStream(r.ContainerId, r.ExecId)
	return readFrom(ctx, f.getProc().stdout)
}

func (f *fakeAgent) ReadStderr(ctx context.Context, r *grpc.ReadStreamRequest) (*grpc.ReadStreamResponse, error) {
	f.noteStream(r.ContainerId, r.ExecId)
	f.mu.Lock()
	f.stderrReads++
	f.mu.Unlock()
	return readFrom(ctx, f.getProc().stderr)
}

func (f *fakeAgent) WriteStdin(_ context.Context, r *grpc.WriteStreamRequest) (*grpc.WriteStreamResponse, error) {
	f.noteStream(r.ContainerId, r.ExecId)
	// Accept at most 3 bytes per call, so the client must loop.
	n := min(len(r.Data), 3)
	f.mu.Lock()
	f.stdin.Write(r.Data[:n])
	exit := f.exitOnInput != "" && strings.Contains(f.stdin.String(), f.exitOnInput)
	f.mu.Unlock()
	if exit {
		p := f.getProc()
		p.closeStdin.Do(func() { close(p.stdinDone) })
	}
	return &grpc.WriteStreamResponse{Len: uint32(n)}, nil
}

func (f *fakeAgent) CloseStdin(_ context.Context, r *grpc.CloseStdinRequest) (*emptypb.Empty, error) {
	f.record("CloseStdin")
	f.noteStream(r.ContainerId, r.ExecId)
	f.mu.Lock()
	f.stdinClosed = true
	f.mu.Unlock()
	p := f.getProc()
	p.closeStdin.Do(func() { close(p.stdinDone) })
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) WaitProcess(ctx context.Context, r *grpc.WaitProcessRequest) (*grpc.WaitProcessResponse, error) {
	f.record("WaitProcess")
	f.noteStream(r.ContainerId, r.ExecId)
	f.waitOnce.Do(func() { close(f.waiting) })
	p := f.getProc()
	if p == nil {
		return &grpc.WaitProcessResponse{Status: f.exitCode}, nil
	}
	select {
	case <-p.exited:
		return &grpc.WaitProcessResponse{Status: p.status}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) SignalProcess(_ context.Context, r *grpc.SignalProcessRequest) (*emptypb.Empty, error) {
	f.record("SignalProcess")
	f.mu.Lock()
	f.signals = append(f.signals, r.Signal)
	f.mu.Unlock()
	if r.Signal == 15 && f.ignoreTerm {
		return &emptypb.Empty{}, nil
	}
	select {
	case f.getProc().killed <- r.Signal:
	default:
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) RemoveContainer(_ context.Context, r *grpc.RemoveContainerRequest) (*emptypb.Empty, error) {
	f.record("RemoveContainer")
	f.mu.Lock()
	f.removedIDs = append(f.removedIDs, r.ContainerId)
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) TtyWinResize(_ context.Context, r *grpc.TtyWinResizeRequest) (*emptypb.Empty, error) {
	f.record("TtyWinResize")
	f.mu.Lock()
	f.resizes = append(f.resizes, r)
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) CopyFile(_ context.Context, r *grpc.CopyFileRequest) (*emptypb.Empty, error) {
	f.record("CopyFile")
	f.mu.Lock()
	f.copies = append(f.copies, r)
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) GetMetrics(context.Context, *grpc.GetMetricsRequest) (*grpc.Metrics, error) {
	return &grpc.Metrics{Metrics: "cova_up 1\n"}, nil
}

func (f *fakeAgent) GetGuestDetails(context.Context, *grpc.GuestDetailsRequest) (*grpc.GuestDetailsResponse, error) {
	return &grpc.GuestDetailsResponse{MemBlockSizeBytes: 128 << 20, AgentDetails: &grpc.AgentDetails{Version: "0.1.0"}}, nil
}

func (f *fakeAgent) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

type fakeHealth struct{}

func (fakeHealth) Check(context.Context, *grpc.CheckRequest) (*grpc.HealthCheckResponse, error) {
	return &grpc.HealthCheckResponse{Status: grpc.HealthCheckResponse_SERVING}, nil
}

func (fakeHealth) Version(context.Context, *grpc.CheckRequest) (*grpc.VersionCheckResponse, error) {
	return &grpc.VersionCheckResponse{GrpcVersion: "0.0.1", AgentVersion: "test-agent"}, nil
}

// serveFake starts a ttrpc server for f on a unix socket and returns its
// address for --addr.
func serveFake(t *testing.T, f *fakeAgent) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	grpc.RegisterAgentServiceService(srv, f)
	grpc.RegisterHealthService(srv, fakeHealth{})
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// syncBuffer is a bytes.Buffer safe for the pump goroutines.
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

// cli runs cova-ctl in-process. Interrupts are delivered through sigs.
type cli struct {
	app            *app
	stdout, stderr *syncBuffer
	mu             sync.Mutex
	sigChans       []chan<- os.Signal
}

func newCLI(stdin io.Reader) *cli {
	c := &cli{stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	c.app = &app{
		stdin:     stdin,
		stdout:    c.stdout,
		stderr:    c.stderr,
		getenv:    func(string) string { return "" },
		stdinFd:   -1,
		killGrace: 200 * time.Millisecond,
		notify: func(ch chan<- os.Signal, sigs ...os.Signal) {
			if slices.Contains(sigs, os.Interrupt) {
				c.mu.Lock()
				c.sigChans = append(c.sigChans, ch)
				c.mu.Unlock()
			}
		},
		stopSig: func(chan<- os.Signal) {},
	}
	return c
}

func (c *cli) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.sigChans {
		ch <- os.Interrupt
	}
}

func (c *cli) run(t *testing.T, args ...string) int {
	t.Helper()
	done := make(chan int, 1)
	go func() { done <- c.app.main(context.Background(), args) }()
	select {
	case code := <-done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatalf("cova-ctl %q did not finish; stdout %q stderr %q", args, c.stdout.String(), c.stderr.String())
	}
	return -1
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestRunEndToEnd(t *testing.T) {
	f := newFakeAgent()
	f.exitCode = 42
	addr := serveFake(t, f)
	c := newCLI(strings.NewReader("ping from stdin"))
	code := c.run(t, "--addr", addr, "--timeout", "5s", "run", "--rootfs", "/guest/rootfs", "--", "/bin/cat", "-")

	if code != 42 {
		t.Fatalf("exit code %d, want 42; stderr %q", code, c.stderr.String())
	}
	if got, want := c.stdout.String(), "hello from stdout\ngot: ping from stdin\n"; got != want {
		t.Fatalf("stdout %q, want %q", got, want)
	}
	if got := c.stderr.String(); got != "warning on stderr\n" {
		t.Fatalf("stderr %q", got)
	}
	calls := f.callList()
	order := []string{"CreateSandbox", "CreateContainer", "StartContainer", "WaitProcess", "RemoveContainer", "DestroySandbox"}
	last := -1
	for _, rpc := range order {
		i := slices.Index(calls, rpc)
		if i <= last {
			t.Fatalf("calls %q: %s missing or out of order", calls, rpc)
		}
		last = i
	}
	if !slices.Contains(calls, "CloseStdin") || slices.Contains(calls, "SignalProcess") {
		t.Fatalf("calls %q", calls)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	sid := f.sandbox.GetSandboxId()
	if !hexID.MatchString(sid) || f.sandbox.GetHostname() != "cova" {
		t.Fatalf("sandbox id %q hostname %q", sid, f.sandbox.GetHostname())
	}
	if f.create.GetContainerId() != sid || f.create.GetExecId() != sid {
		t.Fatalf("container id %q exec id %q, want the sandbox id", f.create.GetContainerId(), f.create.GetExecId())
	}
	spec := f.create.GetOCI()
	if spec.GetRoot().GetPath() != "/guest/rootfs" || !slices.Equal(spec.GetProcess().GetArgs(), []string{"/bin/cat", "-"}) || spec.GetProcess().GetTerminal() {
		t.Fatalf("spec root %q args %q terminal %v", spec.GetRoot().GetPath(), spec.GetProcess().GetArgs(), spec.GetProcess().GetTerminal())
	}
	for _, ns := range spec.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			t.Fatal("spec has a network namespace")
		}
	}
	if !slices.Equal(f.removedIDs, []string{sid}) {
		t.Fatalf("removed %q", f.removedIDs)
	}
	if len(f.streamIDs) != 1 || !f.streamIDs[sid+"/"+sid] {
		t.Fatalf("stdio calls used ids %v", f.streamIDs)
	}
}

func TestRunZeroExit(t *testing.T) {
	f := newFakeAgent()
	addr := serveFake(t, f)
	c := newCLI(strings.NewReader(""))
	if code := c.run(t, "--addr", addr, "run", "--id", "web", "--rootfs", "/r", "--", "true"); code != 0 {
		t.Fatalf("exit code %d; stderr %q", code, c.stderr.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.create.GetContainerId() != "web" || f.sandbox.GetSandboxId() == "web" {
		t.Fatalf("container %q sandbox %q", f.create.GetContainerId(), f.sandbox.GetSandboxId())
	}
	if !strings.Contains(c.stdout.String(), "got: \n") {
		t.Fatalf("stdout %q", c.stdout.String())
	}
}

func TestRunInterrupt(t *testing.T) {
	f := newFakeAgent()
	f.ignoreTerm = true
	addr := serveFake(t, f)
	pr, pw := io.Pipe() // stdin that never ends
	defer pw.Close()
	c := newCLI(pr)
	done := make(chan int, 1)
	go func() { done <- c.run(t, "--addr", addr, "run", "--rootfs", "/r", "--", "sleep", "1000") }()
	select {
	case <-f.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitProcess never called")
	}
	c.interrupt() // SIGTERM, ignored; SIGKILL follows after killGrace
	var code int
	select {
	case code = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end after the interrupt")
	}
	if code != 128+9 {
		t.Fatalf("exit code %d, want 137; stderr %q", code, c.stderr.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Equal(f.signals, []uint32{15, 9}) {
		t.Fatalf("signals %v, want [15 9]", f.signals)
	}
	if !slices.Contains(f.calls, "DestroySandbox") {
		t.Fatalf("no cleanup after interrupt: %q", f.calls)
	}
}

// TestRunTTY uses a pty as the local terminal: raw mode while the process
// runs, the window size sent, stdin forwarded although it is a terminal, no
// stderr stream, and the terminal restored afterwards.
func TestRunTTY(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	if err := pty.Setsize(master, &pty.Winsize{Rows: 33, Cols: 99}); err != nil {
		t.Fatal(err)
	}
	fd := int(slave.Fd())
	before, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if before.Lflag&unix.ECHO == 0 {
		t.Fatal("a new pty should echo")
	}

	f := newFakeAgent()
	f.exitCode = 5
	f.exitOnInput = "bye"
	addr := serveFake(t, f)
	c := newCLI(slave)
	c.app.stdinFd = fd
	done := make(chan int, 1)
	go func() { done <- c.run(t, "--addr", addr, "run", "--tty", "--rootfs", "/r", "--", "sh") }()
	select {
	case <-f.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitProcess never called")
	}
	during, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if during.Lflag&(unix.ECHO|unix.ICANON) != 0 {
		t.Fatalf("terminal not raw while running: lflag %#x", during.Lflag)
	}
	if _, err := master.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	var code int
	select {
	case code = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not finish")
	}
	if code != 5 {
		t.Fatalf("exit code %d; stderr %q", code, c.stderr.String())
	}
	after, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Fatalf("terminal not restored: lflag %#x, want %#x", after.Lflag, before.Lflag)
	}
	if got := c.stdout.String(); got != "hello from stdout\ngot: bye\n" {
		t.Fatalf("stdout %q", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.create.GetOCI().GetProcess().GetTerminal() {
		t.Fatal("spec process is not a terminal")
	}
	if f.stderrReads != 0 {
		t.Fatalf("%d ReadStderr calls for a tty process", f.stderrReads)
	}
	if len(f.resizes) == 0 || f.resizes[0].Row != 33 || f.resizes[0].Column != 99 {
		t.Fatalf("resizes %v, want 33x99", f.resizes)
	}
}

func TestRunCreateFails(t *testing.T) {
	f := newFakeAgent()
	f.createErr = gstatus.Error(codes.PermissionDenied, "policy: CreateContainerRequest denied")
	addr := serveFake(t, f)
	c := newCLI(strings.NewReader(""))
	code := c.run(t, "--addr", addr, "run", "--rootfs", "/r", "--", "sh")
	if code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if got, want := c.stderr.String(), "cova-ctl: CreateContainer: PermissionDenied: policy: CreateContainerRequest denied\n"; got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
	calls := f.callList()
	if !slices.Contains(calls, "DestroySandbox") || slices.Contains(calls, "RemoveContainer") || slices.Contains(calls, "StartContainer") {
		t.Fatalf("calls %q", calls)
	}
}

func TestExecEndToEnd(t *testing.T) {
	f := newFakeAgent()
	f.exitCode = 3
	addr := serveFake(t, f)
	c := newCLI(strings.NewReader("x"))
	code := c.run(t, "--addr", addr, "exec", "--id", "c1", "--exec-id", "e1", "--", "ps", "aux")
	if code != 3 {
		t.Fatalf("exit code %d; stderr %q", code, c.stderr.String())
	}
	if got := c.stdout.String(); got != "hello from stdout\ngot: x\n" {
		t.Fatalf("stdout %q", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.execReq.GetContainerId() != "c1" || f.execReq.GetExecId() != "e1" || !slices.Equal(f.execReq.GetProcess().GetArgs(), []string{"ps", "aux"}) {
		t.Fatalf("exec request %v", f.execReq)
	}
	if !f.streamIDs["c1/e1"] || len(f.streamIDs) != 1 {
		t.Fatalf("stdio ids %v", f.streamIDs)
	}
}

func TestOneShotCommands(t *testing.T) {
	f := newFakeAgent()
	f.exitCode = 7
	addr := serveFake(t, f)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "check", args: []string{"check"}, wantStdout: "SERVING\n"},
		{name: "version", args: []string{"version"}, wantStdout: "agent version: test-agent\nAPI version: 0.0.1\n"},
		{name: "metrics", args: []string{"metrics"}, wantStdout: "cova_up 1\n"},
		{name: "wait passes the status", args: []string{"wait", "--id", "c1"}, wantCode: 7},
		{name: "not found", args: []string{"start", "--id", "missing"}, wantCode: 1,
			wantStderr: "cova-ctl: StartContainer: NotFound: container missing not found\n"},
		{name: "usage error", args: []string{"start"}, wantCode: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCLI(strings.NewReader(""))
			code := c.run(t, append([]string{"--addr", addr}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d; stderr %q", code, tt.wantCode, c.stderr.String())
			}
			if tt.wantStdout != "" && c.stdout.String() != tt.wantStdout {
				t.Fatalf("stdout %q, want %q", c.stdout.String(), tt.wantStdout)
			}
			if tt.wantStderr != "" && c.stderr.String() != tt.wantStderr {
				t.Fatalf("stderr %q, want %q", c.stderr.String(), tt.wantStderr)
			}
		})
	}

	t.Run("guest-details JSON", func(t *testing.T) {
		c := newCLI(strings.NewReader(""))
		if code := c.run(t, "--addr", addr, "guest-details"); code != 0 {
			t.Fatalf("exit code %d: %s", code, c.stderr.String())
		}
		var got struct {
			MemBlockSizeBytes string `json:"memBlockSizeBytes"`
			AgentDetails      struct {
				Version string `json:"version"`
			} `json:"agentDetails"`
		}
		if err := json.Unmarshal([]byte(c.stdout.String()), &got); err != nil {
			t.Fatalf("guest-details output %q: %v", c.stdout.String(), err)
		}
		if got.MemBlockSizeBytes != "134217728" || got.AgentDetails.Version != "0.1.0" {
			t.Fatalf("guest-details output %s", c.stdout.String())
		}
	})

	t.Run("unimplemented rpc", func(t *testing.T) {
		// The fake has no UpdateContainer etc.; use a server without the
		// agent service to get UNIMPLEMENTED from ttrpc itself.
		sock := filepath.Join(t.TempDir(), "h.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv, _ := ttrpc.NewServer()
		grpc.RegisterHealthService(srv, fakeHealth{})
		go func() { _ = srv.Serve(context.Background(), l) }()
		defer srv.Close()
		c := newCLI(strings.NewReader(""))
		if code := c.run(t, "--addr", "unix://"+sock, "pause", "--id", "c1"); code != 1 {
			t.Fatalf("exit code %d", code)
		}
		if !strings.HasPrefix(c.stderr.String(), "cova-ctl: PauseContainer: Unimplemented: ") {
			t.Fatalf("stderr %q", c.stderr.String())
		}
	})

	t.Run("dial failure", func(t *testing.T) {
		c := newCLI(strings.NewReader(""))
		code := c.run(t, "--addr", "unix://"+filepath.Join(t.TempDir(), "none.sock"), "check")
		if code != 1 || !strings.HasPrefix(c.stderr.String(), "cova-ctl: connecting to agent: ") {
			t.Fatalf("exit code %d stderr %q", code, c.stderr.String())
		}
	})
}

func TestCopyFileChunks(t *testing.T) {
	f := newFakeAgent()
	addr := serveFake(t, f)
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), (5<<20)/2/16) // 2.5 MiB
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/token", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		local      string
		wantChunks []int // data length per request
		check      func(t *testing.T, reqs []*grpc.CopyFileRequest)
	}{
		{name: "big file", local: "big", wantChunks: []int{1 << 20, 1 << 20, 1 << 19}, check: func(t *testing.T, reqs []*grpc.CopyFileRequest) {
			var got []byte
			for i, r := range reqs {
				if r.Offset != int64(len(got)) || r.FileSize != int64(len(big)) || r.FileMode != 0o100640 || r.Uid != 1000 {
					t.Fatalf("chunk %d: offset %d size %d mode %o uid %d", i, r.Offset, r.FileSize, r.FileMode, r.Uid)
				}
				got = append(got, r.Data...)
			}
			if !bytes.Equal(got, big) {
				t.Fatal("reassembled data differs")
			}
		}},
		{name: "empty file", local: "empty", wantChunks: []int{0}},
		{name: "symlink", local: "link", wantChunks: []int{len("..data/token")}, check: func(t *testing.T, reqs []*grpc.CopyFileRequest) {
			if string(reqs[0].Data) != "..data/token" || reqs[0].FileMode&0o170000 != 0o120000 {
				t.Fatalf("symlink request %v", reqs[0])
			}
		}},
		{name: "directory", local: ".", wantChunks: []int{0}, check: func(t *testing.T, reqs []*grpc.CopyFileRequest) {
			if reqs[0].FileMode&0o170000 != 0o040000 {
				t.Fatalf("directory mode %o", reqs[0].FileMode)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.mu.Lock()
			f.copies = nil
			f.mu.Unlock()
			c := newCLI(strings.NewReader(""))
			remote := "/run/kata-containers/shared/containers/" + tt.name
			if code := c.run(t, "--addr", addr, "copy-file", "--uid", "1000", filepath.Join(dir, tt.local), remote); code != 0 {
				t.Fatalf("exit code %d: %s", code, c.stderr.String())
			}
			f.mu.Lock()
			reqs := slices.Clone(f.copies)
			f.mu.Unlock()
			var sizes []int
			for _, r := range reqs {
				sizes = append(sizes, len(r.Data))
				if r.Path != remote {
					t.Fatalf("path %q", r.Path)
				}
			}
			if !slices.Equal(sizes, tt.wantChunks) {
				t.Fatalf("chunk sizes %v, want %v", sizes, tt.wantChunks)
			}
			if tt.check != nil {
				tt.check(t, reqs)
			}
		})
	}
}

func TestRPCErrorFormat(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "status", err: gstatus.Error(codes.NotFound, "no such container"), want: "WaitProcess: NotFound: no such container"},
		{name: "deadline", err: fmt.Errorf("call: %w", context.DeadlineExceeded), want: "WaitProcess: DeadlineExceeded: call: context deadline exceeded"},
		{name: "closed", err: ttrpc.ErrClosed, want: "WaitProcess: Unavailable: ttrpc: closed"},
		{name: "other", err: io.ErrUnexpectedEOF, want: "WaitProcess: Unknown: unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (&rpcError{rpc: "WaitProcess", err: tt.err}).Error(); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

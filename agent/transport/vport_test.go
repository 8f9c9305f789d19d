package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/cova-project/cova/agent/config"
	"github.com/cova-project/cova/protocols/grpc"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// fakePort stands in for a virtio-serial port: DevDir/<entry> is a symlink to
// the slave of a pty pair in raw mode, and the master is the host end.
// Closing the master is the host disconnecting; plugging a new pair and
// re-pointing the symlink is the host reconnecting.
type fakePort struct {
	devDir, portsDir string
	entry            string
	master, slave    *os.File
}

func newFakePort(t *testing.T, entry, name string) *fakePort {
	t.Helper()
	root := t.TempDir()
	p := &fakePort{devDir: filepath.Join(root, "dev"), portsDir: filepath.Join(root, "virtio-ports"), entry: entry}
	for _, d := range []string{p.devDir, p.portsDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A decoy port, a stray entry and the port itself.
	writeName(t, p.portsDir, "vport1p1", "other.0\n")
	if err := os.Mkdir(filepath.Join(p.portsDir, "power"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeName(t, p.portsDir, entry, name+"\n")
	t.Cleanup(p.unplug)
	return p
}

func writeName(t *testing.T, portsDir, entry, name string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(portsDir, entry), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(portsDir, entry, "name"), []byte(name), 0o444); err != nil {
		t.Fatal(err)
	}
}

func (p *fakePort) devPath() string { return filepath.Join(p.devDir, p.entry) }

// openRawPty opens a pty pair with the line discipline in raw mode, so
// bytes pass unchanged like on a virtio-serial port. Both ends are opened
// non-blocking so that Close interrupts a pending Read (os.File.Fd, which
// creack/pty calls, would switch the master to blocking mode).
func openRawPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pty available: %v", err)
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(mfd)
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(mfd)
		t.Fatalf("ptsname: %v", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		unix.Close(mfd)
		t.Fatalf("opening %s: %v", name, err)
	}
	if _, err := term.MakeRaw(sfd); err != nil {
		unix.Close(mfd)
		unix.Close(sfd)
		t.Fatalf("raw mode: %v", err)
	}
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name)
}

// plug attaches a new host end.
func (p *fakePort) plug(t *testing.T) {
	t.Helper()
	m, s := openRawPty(t)
	p.master, p.slave = m, s
	tmp := p.devPath() + ".new"
	if err := os.Symlink(s.Name(), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.devPath()); err != nil {
		t.Fatal(err)
	}
}

// unplug disconnects the host end.
func (p *fakePort) unplug() {
	if p.master != nil {
		p.master.Close()
		p.slave.Close()
		p.master, p.slave = nil, nil
	}
}

func (p *fakePort) listen(t *testing.T, spec string) net.Listener {
	t.Helper()
	a, err := config.ParseAddr("vport:" + spec)
	if err != nil {
		t.Fatal(err)
	}
	lc := ListenConfig{DevDir: p.devDir, PortsDir: p.portsDir, PortWait: -1, PollInterval: 5 * time.Millisecond}
	l, err := lc.Listen(context.Background(), a)
	if err != nil {
		t.Fatalf("Listen(vport:%s): %v", spec, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

type acceptResult struct {
	c   net.Conn
	err error
}

func acceptAsync(l net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

func waitAccept(t *testing.T, ch <-chan acceptResult) net.Conn {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return")
	}
	return nil
}

// pingPong checks both directions between the host end and conn.
func pingPong(t *testing.T, host *os.File, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_ = host.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(host, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("guest read %q, %v; want %q", buf, err, msg)
	}
	if _, err := io.WriteString(c, msg+"!"); err != nil {
		t.Fatal(err)
	}
	buf = make([]byte, len(msg)+1)
	if _, err := io.ReadFull(host, buf); err != nil || string(buf) != msg+"!" {
		t.Fatalf("host read %q, %v; want %q", buf, err, msg+"!")
	}
}

func TestVportReopen(t *testing.T) {
	p := newFakePort(t, "vport1p2", "agent.0")
	p.plug(t)
	l := p.listen(t, "agent.0")
	if got := l.Addr().String(); got != p.devPath() {
		t.Fatalf("Addr = %q, want %q", got, p.devPath())
	}

	c1 := waitAccept(t, acceptAsync(l))
	pingPong(t, p.master, c1, "first")

	// One stream: no second connection while the first is open.
	next := acceptAsync(l)
	select {
	case r := <-next:
		t.Fatalf("second Accept returned while the first conn is open: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}

	// The host goes away: the guest end sees EOF/EIO, the server closes.
	p.unplug()
	_ = c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c1.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after host hangup succeeded")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("read after host hangup blocked instead of failing")
	}
	if err := c1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// The device is gone for a while; Accept keeps retrying.
	select {
	case r := <-next:
		t.Fatalf("Accept returned while no host is attached: %v", r.err)
	case <-time.After(50 * time.Millisecond):
	}
	p.plug(t)
	c2 := waitAccept(t, next)
	defer c2.Close()
	pingPong(t, p.master, c2, "second")

	// Closing the listener unblocks a waiting Accept; the open conn lives on.
	blocked := acceptAsync(l)
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-blocked:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	pingPong(t, p.master, c2, "still open")
}

func TestVportCloseWhileWaitingForHost(t *testing.T) {
	p := newFakePort(t, "vport1p2", "agent.0")
	p.plug(t)
	l := p.listen(t, "/dev/vport1p2")
	p.unplug() // the node now dangles: Accept waits in the open loop
	ch := acceptAsync(l)
	time.Sleep(30 * time.Millisecond)
	l.Close()
	select {
	case r := <-ch:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Accept = %v, want net.ErrClosed", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

func TestVportListenErrors(t *testing.T) {
	p := newFakePort(t, "vport1p2", "agent.0")
	if err := os.WriteFile(filepath.Join(p.devDir, "vport3p1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeName(t, p.portsDir, "vport3p1", "plainfile")
	lc := ListenConfig{DevDir: p.devDir, PortsDir: p.portsDir, PortWait: -1}
	tests := []struct {
		name    string
		spec    string
		wantErr error
	}{
		{name: "unknown name", spec: "nosuch.0", wantErr: fs.ErrNotExist},
		{name: "missing device", spec: "/dev/vport9p9", wantErr: fs.ErrNotExist},
		{name: "name without device node", spec: "agent.0", wantErr: fs.ErrNotExist},
		{name: "not a character device", spec: "plainfile", wantErr: errdefs.ErrInvalidArgument},
		{name: "device path outside /dev", spec: "/tmp/vport1p1", wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := lc.Listen(context.Background(), config.Addr{Scheme: config.SchemeVport, Path: tt.spec})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Listen(vport:%s) = %v, want %v", tt.spec, err, tt.wantErr)
			}
		})
	}
}

func TestVportWaitsForPort(t *testing.T) {
	p := newFakePort(t, "vport1p2", "agent.0")
	lc := ListenConfig{DevDir: p.devDir, PortsDir: p.portsDir, PortWait: 5 * time.Second, PollInterval: 5 * time.Millisecond}
	m, s := openRawPty(t)
	defer m.Close()
	defer s.Close()
	time.AfterFunc(50*time.Millisecond, func() { _ = os.Symlink(s.Name(), p.devPath()) })
	l, err := lc.Listen(context.Background(), config.Addr{Scheme: config.SchemeVport, Path: "agent.0"})
	if err != nil {
		t.Fatalf("Listen did not wait for the port: %v", err)
	}
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = lc.Listen(ctx, config.Addr{Scheme: config.SchemeVport, Path: "late.0"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Listen with an expiring context = %v, want DeadlineExceeded", err)
	}
}

// fileConn makes the pty master a net.Conn for the ttrpc client.
type fileConn struct{ *os.File }

func (fileConn) LocalAddr() net.Addr  { return vportAddr("host") }
func (fileConn) RemoteAddr() net.Addr { return vportAddr("guest") }

type healthServer struct{}

func (healthServer) Check(context.Context, *grpc.CheckRequest) (*grpc.HealthCheckResponse, error) {
	return &grpc.HealthCheckResponse{Status: grpc.HealthCheckResponse_SERVING}, nil
}

func (healthServer) Version(context.Context, *grpc.CheckRequest) (*grpc.VersionCheckResponse, error) {
	return &grpc.VersionCheckResponse{AgentVersion: "test"}, nil
}

// TestVportTTRPC runs a ttrpc server on the port listener and checks that a
// host can disconnect and reconnect.
func TestVportTTRPC(t *testing.T) {
	p := newFakePort(t, "vport1p2", "agent.0")
	p.plug(t)
	l := p.listen(t, "agent.0")
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	grpc.RegisterHealthService(srv, healthServer{})
	go func() { _ = srv.Serve(context.Background(), l) }()
	defer srv.Close()

	for i := range 3 {
		client := ttrpc.NewClient(fileConn{p.master})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := grpc.NewHealthClient(client).Check(ctx, &grpc.CheckRequest{})
		cancel()
		if err != nil {
			t.Fatalf("connection %d: Check: %v", i, err)
		}
		if resp.Status != grpc.HealthCheckResponse_SERVING {
			t.Fatalf("connection %d: status %v", i, resp.Status)
		}
		client.Close() // closes the master: the host disconnects
		p.master = nil
		p.slave.Close()
		p.plug(t)
	}
}

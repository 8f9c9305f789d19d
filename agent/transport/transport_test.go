package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/agent/config"
	"golang.org/x/sys/unix"
)

// echoServe accepts one connection on l and echoes everything back.
func echoServe(t *testing.T, l net.Listener) {
	t.Helper()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
}

// roundTrip writes msg to c and expects it echoed back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func TestParseDialAddr(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want dialAddr
		bad  bool
	}{
		{name: "unix", in: "unix:///run/cova/agent.sock", want: dialAddr{scheme: "unix", path: "/run/cova/agent.sock"}},
		{name: "unix abstract", in: "unix://@cova", want: dialAddr{scheme: "unix", path: "@cova"}},
		{name: "unix relative", in: "unix://run/x", bad: true},
		{name: "vsock", in: "vsock://3:1024", want: dialAddr{scheme: "vsock", cid: 3, port: 1024}},
		{name: "vsock any cid", in: "vsock://-1:1024", bad: true},
		{name: "vsock no port", in: "vsock://3", bad: true},
		{name: "hvsock", in: "hvsock:///run/vc/clh.sock:1024", want: dialAddr{scheme: "hvsock", path: "/run/vc/clh.sock", port: 1024}},
		{name: "hvsock colon in path", in: "hvsock:///tmp/a:b/s.sock:1024", want: dialAddr{scheme: "hvsock", path: "/tmp/a:b/s.sock", port: 1024}},
		{name: "hvsock no port", in: "hvsock:///run/vc/clh.sock", bad: true},
		{name: "hvsock port zero", in: "hvsock:///run/x.sock:0", bad: true},
		{name: "hvsock port too big", in: "hvsock:///run/x.sock:4294967296", bad: true},
		{name: "hvsock no slashes", in: "hvsock:/run/x.sock:1", bad: true},
		{name: "tcp", in: "tcp://127.0.0.1:1024", want: dialAddr{scheme: "tcp", hostPort: "127.0.0.1:1024"}},
		{name: "tcp short", in: "tcp:localhost:80", want: dialAddr{scheme: "tcp", hostPort: "localhost:80"}},
		{name: "tcp bad port", in: "tcp://127.0.0.1:99999", bad: true},
		{name: "mock", in: "mock:/tmp/agent.sock", want: dialAddr{scheme: "unix", path: "/tmp/agent.sock"}},
		{name: "mock url form", in: "mock:///tmp/agent.sock", want: dialAddr{scheme: "unix", path: "/tmp/agent.sock"}},
		{name: "remote", in: "remote:/run/peerpod/agent.sock", want: dialAddr{scheme: "unix", path: "/run/peerpod/agent.sock"}},
		{name: "remote empty", in: "remote:", bad: true},
		{name: "vport is guest only", in: "vport:agent.0", bad: true},
		{name: "no scheme", in: "/run/agent.sock", bad: true},
		{name: "unknown scheme", in: "http://x", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDialAddr(tt.in)
			if tt.bad {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("parseDialAddr(%q) = %+v, %v; want ErrInvalidArgument", tt.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseDialAddr(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("parseDialAddr(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestUnixListenDial(t *testing.T) {
	ctx := context.Background()
	t.Run("round trip and mode", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sub", "agent.sock")
		l, err := Listen(ctx, config.Addr{Scheme: config.SchemeUnix, Path: path})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
		}
		echoServe(t, l)
		c, err := Dial(ctx, "unix://"+path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, "hello unix")
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "agent.sock")
		old, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close() // leaves the socket file behind
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("stale socket missing: %v", err)
		}
		l, err := Listen(ctx, config.Addr{Scheme: config.SchemeUnix, Path: path})
		if err != nil {
			t.Fatalf("Listen over stale socket: %v", err)
		}
		defer l.Close()
		echoServe(t, l)
		c, err := Dial(ctx, "mock:"+path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, "again")
	})
	t.Run("regular file not removed", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "agent.sock")
		if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Listen(ctx, config.Addr{Scheme: config.SchemeUnix, Path: path})
		if !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Fatalf("Listen over regular file: %v, want ErrAlreadyExists", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep" {
			t.Fatalf("regular file changed: %q", b)
		}
	})
	t.Run("abstract", func(t *testing.T) {
		name := "@cova-transport-test-" + filepath.Base(t.TempDir())
		l, err := Listen(ctx, config.Addr{Scheme: config.SchemeUnix, Path: name})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		echoServe(t, l)
		c, err := Dial(ctx, "unix://"+name)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, "abstract")
	})
	t.Run("dial missing socket", func(t *testing.T) {
		_, err := Dial(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock"))
		if err == nil {
			t.Fatal("Dial of a missing socket succeeded")
		}
	})
}

func TestTCP(t *testing.T) {
	ctx := context.Background()
	l, err := Listen(ctx, config.Addr{Scheme: config.SchemeTCP, Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	echoServe(t, l)
	c, err := Dial(ctx, "tcp://"+l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "hello tcp")
}

func TestListenBadScheme(t *testing.T) {
	_, err := Listen(context.Background(), config.Addr{Scheme: "http"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Listen(http) = %v, want ErrInvalidArgument", err)
	}
}

// hybridServer is a fake hybrid vsock VMM socket. answer decides what to
// write back for the n-th connection (1-based); an empty answer means never
// answer. After an OK answer it echoes the stream.
type hybridServer struct {
	path string
	l    net.Listener

	mu    sync.Mutex
	lines []string
	conns int
}

func newHybridServer(t *testing.T, answer func(n int) string) *hybridServer {
	t.Helper()
	s := &hybridServer{path: filepath.Join(t.TempDir(), "hv.sock")}
	l, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	s.l = l
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			n := s.conns
			s.mu.Unlock()
			go s.handle(c, answer(n))
		}
	}()
	return s
}

func (s *hybridServer) handle(c net.Conn, answer string) {
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
	if answer == "" {
		_, _ = io.Copy(io.Discard, br) // never answers; hold until the client leaves
		return
	}
	if _, err := io.WriteString(c, answer); err != nil {
		return
	}
	if strings.HasPrefix(answer, "OK") {
		_, _ = io.Copy(c, br)
	}
}

func (s *hybridServer) stats() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...), s.conns
}

func TestHybridVsock(t *testing.T) {
	d := Dialer{HandshakeTimeout: 200 * time.Millisecond, RetryInterval: 10 * time.Millisecond}

	t.Run("ok then proxy", func(t *testing.T) {
		s := newHybridServer(t, func(int) string { return "OK 1073741824\n" })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.Dial(ctx, "hvsock://"+s.path+":1024")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, "through the vmm")
		lines, _ := s.stats()
		if len(lines) != 1 || lines[0] != "CONNECT 1024\n" {
			t.Fatalf("server saw %q, want one CONNECT 1024 line", lines)
		}
	})

	t.Run("data right after OK is kept", func(t *testing.T) {
		s := newHybridServer(t, func(int) string { return "OK 5\nearly bytes" })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.Dial(ctx, "hvsock://"+s.path+":7")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len("early bytes"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "early bytes" {
			t.Fatalf("read after OK = %q, %v", buf, err)
		}
	})

	t.Run("retries until OK", func(t *testing.T) {
		s := newHybridServer(t, func(n int) string {
			if n < 3 {
				return "NO\n" // guest not listening yet
			}
			return "OK 1\n"
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.Dial(ctx, "hvsock://"+s.path+":1024")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, "third time")
		if _, n := s.stats(); n != 3 {
			t.Fatalf("server saw %d connections, want 3", n)
		}
	})

	failures := []struct {
		name   string
		answer string
	}{
		{name: "garbage", answer: "HELLO THERE\n"},
		{name: "error line", answer: "ERR no such port\n"},
		{name: "never answers", answer: ""},
		{name: "endless line", answer: strings.Repeat("O", 1000)},
		{name: "closes without newline", answer: "OK"},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			s := newHybridServer(t, func(int) string { return tt.answer })
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			c, err := d.Dial(ctx, "hvsock://"+s.path+":1024")
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded against a bad hybrid vsock server")
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("Dial took %v, want it bounded by the context", el)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("error %v does not say the deadline passed", err)
			}
			if _, n := s.stats(); n < 1 {
				t.Fatalf("server saw %d connections", n)
			}
		})
	}

	t.Run("cancel without deadline", func(t *testing.T) {
		s := newHybridServer(t, func(int) string { return "" })
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		_, err := Dialer{HandshakeTimeout: time.Hour}.Dial(ctx, "hvsock://"+s.path+":1024")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial = %v, want context.Canceled", err)
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("Dial took %v after cancel", el)
		}
	})

	t.Run("no socket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := d.Dial(ctx, "hvsock://"+filepath.Join(t.TempDir(), "none.sock")+":1024")
		if err == nil {
			t.Fatal("Dial without a socket succeeded")
		}
	})
}

// TestVsock covers what can run without a vsock transport: the listener
// opens when AF_VSOCK exists (no loopback is needed for bind), and a round
// trip runs only if the kernel has vsock loopback.
func TestVsock(t *testing.T) {
	ctx := context.Background()
	const port = 49152 + 731
	l, err := Listen(ctx, config.Addr{Scheme: config.SchemeVsock, CID: config.CIDAny, Port: port})
	if err != nil {
		if IsVsockUnsupported(err) {
			if !errors.Is(err, errdefs.ErrNotImplemented) {
				t.Errorf("unsupported vsock error %v is not ErrNotImplemented", err)
			}
			t.Skipf("no AF_VSOCK here: %v", err)
		}
		t.Fatalf("vsock listen: %v", err)
	}
	defer l.Close()
	if got := l.Addr().Network(); got != "vsock" {
		t.Fatalf("listener network = %q", got)
	}
	echoServe(t, l)
	dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	c, err := Dial(dctx, fmt.Sprintf("vsock://1:%d", port))
	if err != nil {
		t.Skipf("no vsock loopback (listener opened fine): %v", err)
	}
	defer c.Close()
	roundTrip(t, c, "hello vsock")
}

func TestIsVsockUnsupported(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "EAFNOSUPPORT", err: os.NewSyscallError("socket", unix.EAFNOSUPPORT), want: true},
		{name: "ENODEV wrapped", err: fmt.Errorf("listen: %w", &net.OpError{Op: "listen", Err: unix.ENODEV}), want: true},
		{name: "EADDRNOTAVAIL", err: unix.EADDRNOTAVAIL, want: true},
		{name: "EADDRINUSE", err: unix.EADDRINUSE, want: false},
		{name: "EPERM", err: unix.EPERM, want: false},
		{name: "nil", err: nil, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsVsockUnsupported(tt.err); got != tt.want {
				t.Fatalf("IsVsockUnsupported(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

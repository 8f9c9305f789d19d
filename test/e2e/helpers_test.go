package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuilder is a goroutine-safe log sink.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runningAgent is bin/cova-agent in host mode on a unix socket.
type runningAgent struct {
	addr, sock, dir string
	logs            *syncBuilder
}

// startAgent runs the built agent with extra flags and waits until it
// listens; the agent is stopped (and its log shown on failure) at cleanup.
func startAgent(t *testing.T, extra ...string) *runningAgent {
	t.Helper()
	dir := t.TempDir()
	a := &runningAgent{dir: dir, sock: filepath.Join(dir, "a.sock"), logs: &syncBuilder{}}
	a.addr = "unix://" + a.sock
	args := append([]string{"--listen", a.addr, "--root", filepath.Join(dir, "state")}, extra...)
	cmd := exec.Command(bin(t, "cova-agent"), args...)
	cmd.Stderr = a.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.logs.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", a.sock); err == nil {
			c.Close()
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not listen:\n%s", a.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// guestRoot is where the agent (host mode) keeps Kata state.
func (a *runningAgent) guestRoot() string { return filepath.Join(a.dir, "state", "kata-containers") }

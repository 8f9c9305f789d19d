package sysinit

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cova-project/cova/test/testutil"
)

// TestLoopbackUp raises lo in a network namespace the test creates (never
// the host's) and checks that 127.0.0.1 then accepts connections.
func TestLoopbackUp(t *testing.T) {
	testutil.RequireRoot(t)
	if err := LoopbackUp(nil); err == nil {
		t.Fatal("LoopbackUp acted although not PID 1")
	}
	done := make(chan error, 1)
	go func() {
		// This thread enters a fresh namespace and never leaves it: the
		// goroutine ends with the thread locked, so the runtime kills it.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			done <- err
			return
		}
		defer h.Close()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			done <- err
			return
		}
		defer l.Close()
		if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
			c.Close()
			done <- errString("127.0.0.1 was reachable before lo was up")
			return
		}
		if err := setLoopbackUp(h); err != nil {
			done <- err
			return
		}
		c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second)
		if err != nil {
			done <- err
			return
		}
		c.Close()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

package network

import (
	"log/slog"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS is a network namespace that exists only for one test, with a
// netlink handle bound to it. Nothing here changes the namespace of the
// test process: the handle's sockets live in the new namespace, and the
// thread that created it is moved back at once.
type testNS struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("network tests need root in CI")
		}
		t.Skip("needs root to create a network namespace")
	}
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	requireRoot(t)

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("opening the current network namespace: %v", err)
	}
	defer orig.Close()
	ns, newErr := netns.New() // moves this thread into the new namespace
	if err := netns.Set(orig); err != nil {
		// The thread may be stuck in the test namespace. Keep it
		// locked: Go ends a locked thread when its goroutine exits.
		t.Fatalf("moving the thread back to its network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if newErr != nil {
		t.Fatalf("creating a network namespace: %v", newErr)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle in the test namespace: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})

	// Guard: a fresh namespace holds only lo. Anything else means the
	// handle points at a real namespace; stop before changing it.
	links, err := h.LinkList()
	if err != nil {
		t.Fatalf("listing links in the test namespace: %v", err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("test namespace is not fresh: %d links", len(links))
	}
	if err := h.LinkSetUp(links[0]); err != nil {
		t.Fatalf("setting lo up: %v", err)
	}
	return &testNS{ns: ns, h: h}
}

// addVeth creates a veth pair inside the namespace, with mac on name and
// the peer up, and returns the name end.
func (n *testNS) addVeth(t *testing.T, name, peer, mac string) netlink.Link {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.HardwareAddr = hw
	if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
		t.Fatalf("adding veth %s/%s: %v", name, peer, err)
	}
	p, err := n.h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
	l, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (n *testNS) link(t *testing.T, index int) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByIndex(index)
	if err != nil {
		t.Fatalf("link %d: %v", index, err)
	}
	return l
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

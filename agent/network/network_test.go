package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/protocols/types"
)

// addrSet lists a link's addresses as "ip/len", leaving out IPv6
// link-local ones.
func addrSet(t *testing.T, h *netlink.Handle, l netlink.Link) []string {
	t.Helper()
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a.IPNet.String())
	}
	slices.Sort(out)
	return out
}

func ifaceAddrs(i *types.Interface) []string {
	var out []string
	for _, a := range i.IPAddresses {
		if strings.HasPrefix(a.Address, "fe80:") {
			continue
		}
		out = append(out, fmt.Sprintf("%s/%s/%s", a.Family, a.Address, a.Mask))
	}
	slices.Sort(out)
	return out
}

func TestUpdateInterface(t *testing.T) {
	n := newTestNS(t)
	l := n.addVeth(t, "veth0", "veth0p", testMAC)
	if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, 99), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	m := New(n.h, testLogger(t), WithLinkTimeout(time.Second))
	ctx := context.Background()
	idx := l.Attrs().Index

	t.Run("rename, mtu, noarp, addresses", func(t *testing.T) {
		res, err := m.UpdateInterface(ctx, goodInterface())
		if err != nil {
			t.Fatal(err)
		}
		got := n.link(t, idx).Attrs()
		if got.Name != "eth0" || got.MTU != 1400 || got.Flags&net.FlagUp == 0 || got.RawFlags&unix.IFF_NOARP == 0 {
			t.Errorf("link after update: name %q mtu %d flags %v raw %#x", got.Name, got.MTU, got.Flags, got.RawFlags)
		}
		if want := []string{"10.1.0.2/24", "2001:db8::2/64"}; !slices.Equal(addrSet(t, n.h, n.link(t, idx)), want) {
			t.Errorf("addresses %v, want %v (192.0.2.99 removed)", addrSet(t, n.h, n.link(t, idx)), want)
		}
		if res.Name != "eth0" || res.HwAddr != testMAC || res.Mtu != 1400 || res.RawFlags != unix.IFF_NOARP ||
			res.Device != "eth0" || res.Type != "veth" || res.DevicePath != "02/00" {
			t.Errorf("result %v", res)
		}
		if want := []string{"v4/10.1.0.2/24", "v6/2001:db8::2/64"}; !slices.Equal(ifaceAddrs(res), want) {
			t.Errorf("result addresses %v, want %v", ifaceAddrs(res), want)
		}
	})

	t.Run("second update replaces addresses and clears noarp", func(t *testing.T) {
		req := &types.Interface{
			Name:        "net1",
			HwAddr:      strings.ToUpper(testMAC),
			IPAddresses: []*types.IPAddress{{Address: "10.2.0.5", Mask: "16"}},
		}
		res, err := m.UpdateInterface(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		got := n.link(t, idx).Attrs()
		if got.Name != "net1" || got.MTU != 1400 || got.RawFlags&unix.IFF_NOARP != 0 || got.Flags&net.FlagUp == 0 {
			t.Errorf("link after update: name %q mtu %d flags %v raw %#x", got.Name, got.MTU, got.Flags, got.RawFlags)
		}
		if want := []string{"10.2.0.5/16"}; !slices.Equal(addrSet(t, n.h, n.link(t, idx)), want) {
			t.Errorf("addresses %v, want %v", addrSet(t, n.h, n.link(t, idx)), want)
		}
		if res.Name != "net1" || res.RawFlags != 0 || res.Mtu != 1400 {
			t.Errorf("result %v", res)
		}
	})

	t.Run("keeps name when none given", func(t *testing.T) {
		if _, err := m.UpdateInterface(ctx, &types.Interface{HwAddr: testMAC, Mtu: 9000}); err != nil {
			t.Fatal(err)
		}
		if got := n.link(t, idx).Attrs(); got.Name != "net1" || got.MTU != 9000 {
			t.Errorf("name %q mtu %d, want net1 9000", got.Name, got.MTU)
		}
	})
}

func TestUpdateInterfaceSwapsNames(t *testing.T) {
	n := newTestNS(t)
	a := n.addVeth(t, "veth0", "veth0p", testMAC)
	b := n.addVeth(t, "veth1", "veth1p", "02:00:00:00:00:11")
	if err := n.h.LinkSetUp(b); err != nil {
		t.Fatal(err)
	}
	m := New(n.h, testLogger(t))
	if _, err := m.UpdateInterface(context.Background(), &types.Interface{HwAddr: testMAC, Name: "veth1"}); err != nil {
		t.Fatal(err)
	}
	if got := n.link(t, a.Attrs().Index).Attrs().Name; got != "veth1" {
		t.Errorf("requested link is called %q, want veth1", got)
	}
	other := n.link(t, b.Attrs().Index).Attrs()
	if other.Name != "veth0" || other.Flags&net.FlagUp == 0 {
		t.Errorf("other link: name %q flags %v, want veth0 and up", other.Name, other.Flags)
	}
}

func TestUpdateInterfaceRefusesLoopbackName(t *testing.T) {
	n := newTestNS(t)
	l := n.addVeth(t, "veth0", "veth0p", testMAC)
	if err := n.h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	m := New(n.h, testLogger(t))
	_, err := m.UpdateInterface(context.Background(), &types.Interface{HwAddr: testMAC, Name: "lo", Mtu: 1300})
	wantInvalid(t, err, "interface.name")
	got := n.link(t, l.Attrs().Index).Attrs()
	if got.Name != "veth0" || got.MTU != 1500 || got.Flags&net.FlagUp == 0 {
		t.Errorf("link changed by a refused request: name %q mtu %d flags %v", got.Name, got.MTU, got.Flags)
	}
	lo, err := n.h.LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagLoopback == 0 {
		t.Errorf("loopback link lost its name: %v", err)
	}
}

func TestUpdateInterfaceNotFound(t *testing.T) {
	n := newTestNS(t)
	n.addVeth(t, "veth0", "veth0p", testMAC)

	t.Run("times out", func(t *testing.T) {
		m := New(n.h, testLogger(t), WithLinkTimeout(100*time.Millisecond), WithPollInterval(20*time.Millisecond))
		start := time.Now()
		_, err := m.UpdateInterface(context.Background(), &types.Interface{Device: "eth7", HwAddr: "02:00:00:00:00:99"})
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("err = %v, want not found", err)
		}
		if !strings.Contains(err.Error(), "02:00:00:00:00:99") || !strings.Contains(err.Error(), `"eth7"`) {
			t.Errorf("error %q does not name the MAC and device", err)
		}
		if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
			t.Errorf("gave up after %s, want about 100ms", d)
		}
	})

	t.Run("context ends the wait", func(t *testing.T) {
		m := New(n.h, testLogger(t), WithLinkTimeout(time.Minute))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := m.UpdateInterface(ctx, &types.Interface{HwAddr: "02:00:00:00:00:99"})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("wait ignored the context: %s", d)
		}
	})

	t.Run("loopback MAC is refused", func(t *testing.T) {
		m := New(n.h, testLogger(t))
		_, err := m.UpdateInterface(context.Background(), &types.Interface{HwAddr: "00:00:00:00:00:00", Name: "eth0"})
		wantInvalid(t, err, "interface.hwAddr")
	})
}

func TestUpdateInterfaceWaitsForHotplug(t *testing.T) {
	n := newTestNS(t)
	// A second handle: the NIC "arrives" from another goroutine.
	h2, err := netlink.NewHandleAt(n.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	const mac = "02:00:00:00:00:42"
	done := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		la := netlink.NewLinkAttrs()
		la.Name = "late0"
		la.HardwareAddr, _ = net.ParseMAC(mac)
		done <- h2.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "late0p"})
	}()
	m := New(n.h, testLogger(t), WithLinkTimeout(10*time.Second))
	res, err := m.UpdateInterface(context.Background(), &types.Interface{HwAddr: mac, Name: "eth0"})
	if aerr := <-done; aerr != nil {
		t.Fatalf("adding the late link: %v", aerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "eth0" || res.HwAddr != mac {
		t.Errorf("result %v", res)
	}
}

// setupEth0 gives the namespace an eth0 with 10.1.0.2/24 and 2001:db8::2/64,
// up, through UpdateInterface.
func setupEth0(t *testing.T, n *testNS, m *Manager) netlink.Link {
	t.Helper()
	l := n.addVeth(t, "veth0", "veth0p", testMAC)
	req := goodInterface()
	req.RawFlags = 0
	if _, err := m.UpdateInterface(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return n.link(t, l.Attrs().Index)
}

func routeKey(r *types.Route) string {
	return fmt.Sprintf("%s %s via=%s dev=%s src=%s scope=%d mtu=%d", r.Family, r.Dest, r.Gateway, r.Device, r.Source, r.Scope, r.Mtu)
}

func routeKeys(rs []*types.Route) []string {
	var out []string
	for _, r := range rs {
		out = append(out, routeKey(r))
	}
	slices.Sort(out)
	return out
}

func mustList(t *testing.T, m *Manager) []*types.Route {
	t.Helper()
	rs, err := m.ListRoutes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func hasRoute(rs []*types.Route, key string) bool {
	return slices.Contains(routeKeys(rs), key)
}

func hasDest(rs []*types.Route, dest, dev string) bool {
	return slices.ContainsFunc(rs, func(r *types.Route) bool { return r.Dest == dest && r.Device == dev })
}

func TestUpdateRoutes(t *testing.T) {
	n := newTestNS(t)
	m := New(n.h, testLogger(t))
	eth0 := setupEth0(t, n, m)
	lo, err := n.h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	_, stale, _ := net.ParseCIDR("198.51.100.0/24")
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: stale, Gw: net.ParseIP("10.1.0.1"), Protocol: unix.RTPROT_BOOT}); err != nil {
		t.Fatal(err)
	}
	_, onLo, _ := net.ParseCIDR("203.0.113.0/24")
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: onLo, Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_BOOT}); err != nil {
		t.Fatal(err)
	}

	// The default gateway is reachable only through the link route listed
	// after it: this fails unless link routes go first.
	req := []*types.Route{
		{Gateway: "192.168.50.1", Device: "eth0"},
		{Dest: "192.168.50.1/32", Device: "eth0", Scope: unix.RT_SCOPE_LINK},
		{Dest: "10.1.0.0/24", Device: "eth0", Scope: unix.RT_SCOPE_LINK, Source: "10.1.0.2"},
		{Dest: "192.0.2.0/24", Gateway: "10.1.0.1", Device: "eth0", Mtu: 1300},
		{Dest: "2001:db8::/64", Device: "eth0", Family: types.IPFamily_v6},
		{Gateway: "2001:db8::1", Device: "eth0", Family: types.IPFamily_v6, Flags: unix.RTNH_F_LINKDOWN},
		{Dest: "2001:db8:1::/48", Gateway: "2001:db8::1", Device: "eth0", Family: types.IPFamily_v6, Mtu: 1280},
	}
	got, err := m.UpdateRoutes(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"v4 0.0.0.0/0 via=192.168.50.1 dev=eth0 src= scope=0 mtu=0",
		"v4 192.168.50.1/32 via= dev=eth0 src= scope=253 mtu=0",
		"v4 10.1.0.0/24 via= dev=eth0 src=10.1.0.2 scope=253 mtu=0",
		"v4 192.0.2.0/24 via=10.1.0.1 dev=eth0 src= scope=0 mtu=1300",
		"v6 2001:db8::/64 via= dev=eth0 src= scope=0 mtu=0",
		"v6 ::/0 via=2001:db8::1 dev=eth0 src= scope=0 mtu=0",
		"v6 2001:db8:1::/48 via=2001:db8::1 dev=eth0 src= scope=0 mtu=1280",
		"v4 203.0.113.0/24 via= dev=lo src= scope=253 mtu=0", // loopback routes are kept
	} {
		if !hasRoute(got, want) {
			t.Errorf("missing route %q in\n%s", want, strings.Join(routeKeys(got), "\n"))
		}
	}
	if hasDest(got, "198.51.100.0/24", "eth0") {
		t.Errorf("stale route survived:\n%s", strings.Join(routeKeys(got), "\n"))
	}
	if !slices.Equal(routeKeys(got), routeKeys(mustList(t, m))) {
		t.Errorf("UpdateRoutes result differs from ListRoutes")
	}

	t.Run("second update replaces the set", func(t *testing.T) {
		got, err := m.UpdateRoutes(context.Background(), []*types.Route{
			{Dest: "10.1.0.0/24", Device: "eth0", Scope: unix.RT_SCOPE_LINK},
			{Gateway: "10.1.0.1", Device: "eth0"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if !hasRoute(got, "v4 0.0.0.0/0 via=10.1.0.1 dev=eth0 src= scope=0 mtu=0") {
			t.Errorf("new default route missing:\n%s", strings.Join(routeKeys(got), "\n"))
		}
		for _, gone := range []string{"192.168.50.1/32", "192.0.2.0/24", "::/0", "2001:db8:1::/48"} {
			if hasDest(got, gone, "eth0") {
				t.Errorf("route %s survived a replace", gone)
			}
		}
		if !hasDest(got, "203.0.113.0/24", "lo") {
			t.Errorf("route on lo removed")
		}
	})
}

func TestUpdateRoutesRefusedRequestChangesNothing(t *testing.T) {
	n := newTestNS(t)
	m := New(n.h, testLogger(t))
	setupEth0(t, n, m)
	if _, err := m.UpdateRoutes(context.Background(), []*types.Route{
		{Dest: "10.1.0.0/24", Device: "eth0", Scope: unix.RT_SCOPE_LINK},
		{Gateway: "10.1.0.1", Device: "eth0"},
		{Dest: "192.0.2.0/24", Gateway: "10.1.0.1", Device: "eth0"},
	}); err != nil {
		t.Fatal(err)
	}
	before := routeKeys(mustList(t, m))

	tests := []struct {
		name   string
		routes []*types.Route
		check  func(t *testing.T, err error)
	}{
		{"unknown device", []*types.Route{
			{Dest: "10.1.0.0/24", Device: "eth0", Scope: unix.RT_SCOPE_LINK},
			{Gateway: "10.1.0.1", Device: "nosuch0"},
		}, func(t *testing.T, err error) {
			if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `routes[1].device: link "nosuch0"`) {
				t.Errorf("err = %v, want not found naming routes[1].device and nosuch0", err)
			}
		}},
		{"loopback device", []*types.Route{{Dest: "192.0.2.0/24", Device: "lo"}}, func(t *testing.T, err error) {
			wantInvalid(t, err, "routes[0].device")
		}},
		{"bad field", []*types.Route{{Dest: "192.0.2.0/24", Device: "eth0", Mtu: 5}}, func(t *testing.T, err error) {
			wantInvalid(t, err, "routes[0].mtu")
		}},
		{"unreachable gateway rolls back", []*types.Route{
			{Dest: "10.1.0.0/24", Device: "eth0", Scope: unix.RT_SCOPE_LINK},
			{Gateway: "172.31.0.1", Device: "eth0"},
		}, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "routes[1]") {
				t.Errorf("err = %v, want an error naming routes[1]", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.UpdateRoutes(context.Background(), tc.routes)
			tc.check(t, err)
			if after := routeKeys(mustList(t, m)); !slices.Equal(before, after) {
				t.Errorf("routes changed:\nbefore\n%s\nafter\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
			}
		})
	}
}

func TestListInterfaces(t *testing.T) {
	n := newTestNS(t)
	m := New(n.h, testLogger(t))
	setupEth0(t, n, m)
	list, err := m.ListInterfaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*types.Interface{}
	for _, i := range list {
		byName[i.Name] = i
	}
	if len(list) != 3 || byName["lo"] == nil || byName["eth0"] == nil || byName["veth0p"] == nil {
		t.Fatalf("interfaces %v, want lo, eth0, veth0p", list)
	}
	lo := byName["lo"]
	if lo.HwAddr != "00:00:00:00:00:00" || lo.Mtu != 65536 {
		t.Errorf("lo = %v", lo)
	}
	if want := []string{"v4/127.0.0.1/8", "v6/::1/128"}; !slices.Equal(ifaceAddrs(lo), want) {
		t.Errorf("lo addresses %v, want %v", ifaceAddrs(lo), want)
	}
	eth0 := byName["eth0"]
	if eth0.HwAddr != testMAC || eth0.Mtu != 1400 || eth0.RawFlags != 0 {
		t.Errorf("eth0 = %v", eth0)
	}
	if want := []string{"v4/10.1.0.2/24", "v6/2001:db8::2/64"}; !slices.Equal(ifaceAddrs(eth0), want) {
		t.Errorf("eth0 addresses %v, want %v", ifaceAddrs(eth0), want)
	}
}

func TestListRoutes(t *testing.T) {
	n := newTestNS(t)
	m := New(n.h, testLogger(t))
	setupEth0(t, n, m)
	rs := mustList(t, m)
	// The kernel's prefix routes for the new addresses, in kata's shape.
	for _, want := range []string{
		"v4 10.1.0.0/24 via= dev=eth0 src=10.1.0.2 scope=253 mtu=0",
		"v6 2001:db8::/64 via= dev=eth0 src= scope=0 mtu=0",
	} {
		if !hasRoute(rs, want) {
			t.Errorf("missing %q in\n%s", want, strings.Join(routeKeys(rs), "\n"))
		}
	}
}

func TestAddARPNeighbors(t *testing.T) {
	n := newTestNS(t)
	m := New(n.h, testLogger(t))
	eth0 := setupEth0(t, n, m)
	if err := m.AddARPNeighbors(context.Background(), goodNeighbors()); err != nil {
		t.Fatal(err)
	}
	neighs, err := n.h.NeighList(eth0.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	find := func(ip string) *netlink.Neigh {
		for i := range neighs {
			if neighs[i].IP.Equal(net.ParseIP(ip)) {
				return &neighs[i]
			}
		}
		return nil
	}
	if e := find("10.1.0.1"); e == nil || e.State != unix.NUD_PERMANENT || e.HardwareAddr.String() != "02:00:00:00:00:01" {
		t.Errorf("IPv4 entry = %+v, want permanent with lladdr", e)
	}
	// REACHABLE ages into other states; it must not be a permanent entry.
	if e := find("2001:db8::1"); e == nil || e.State == unix.NUD_PERMANENT || e.Flags&unix.NTF_ROUTER == 0 {
		t.Errorf("IPv6 entry = %+v, want a router entry", e)
	}
	proxies, err := n.h.NeighProxyList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(proxies, func(p netlink.Neigh) bool { return p.IP.Equal(net.ParseIP("10.1.0.9")) }) {
		t.Errorf("proxy entry missing: %+v", proxies)
	}

	t.Run("replace", func(t *testing.T) {
		err := m.AddARPNeighbors(context.Background(), []*types.ARPNeighbor{
			{ToIPAddress: &types.IPAddress{Address: "10.1.0.1"}, Device: "eth0", Lladdr: "02:00:00:00:00:02"},
		})
		if err != nil {
			t.Fatal(err)
		}
		neighs, _ = n.h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
		if e := find("10.1.0.1"); e == nil || e.HardwareAddr.String() != "02:00:00:00:00:02" {
			t.Errorf("entry not replaced: %+v", e)
		}
	})
	t.Run("unknown device", func(t *testing.T) {
		err := m.AddARPNeighbors(context.Background(), []*types.ARPNeighbor{
			{ToIPAddress: &types.IPAddress{Address: "10.1.0.7"}, Device: "eth0", Lladdr: "02:00:00:00:00:07"},
			{ToIPAddress: &types.IPAddress{Address: "10.1.0.8"}, Device: "eth9", Lladdr: "02:00:00:00:00:08"},
		})
		if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `neighbors[1].device: link "eth9"`) {
			t.Errorf("err = %v, want not found naming neighbors[1].device", err)
		}
		neighs, _ = n.h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
		if find("10.1.0.7") != nil {
			t.Errorf("entry written although the request was refused")
		}
	})
	t.Run("loopback device", func(t *testing.T) {
		err := m.AddARPNeighbors(context.Background(), []*types.ARPNeighbor{
			{ToIPAddress: &types.IPAddress{Address: "10.1.0.7"}, Device: "lo", Lladdr: "02:00:00:00:00:07"},
		})
		wantInvalid(t, err, "neighbors[0].device")
	})
}

// TestNilHandleUsesCallingThread checks that New(nil, ...) works in the
// namespace of the calling thread, here the test namespace (the host has
// other links).
func TestNilHandleUsesCallingThread(t *testing.T) {
	n := newTestNS(t)
	n.addVeth(t, "veth0", "veth0p", testMAC)

	type result struct {
		names []string
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		if err := netns.Set(n.ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		list, err := New(nil, nil).ListInterfaces(context.Background())
		if serr := netns.Set(orig); serr != nil {
			// Stay locked: the thread ends with this goroutine.
			ch <- result{err: fmt.Errorf("moving back: %w", serr)}
			return
		}
		runtime.UnlockOSThread()
		var names []string
		for _, i := range list {
			names = append(names, i.Name)
		}
		slices.Sort(names)
		ch <- result{names: names, err: err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := []string{"lo", "veth0", "veth0p"}; !slices.Equal(r.names, want) {
		t.Errorf("links %v, want %v", r.names, want)
	}
}

package agent_test

import (
	"net"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/codes"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/network"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
	"github.com/cova-project/cova/test/testutil"
)

// testNetNS makes a fresh network namespace (never the host's) and returns a
// netlink handle into it.
func testNetNS(t *testing.T) *netlink.Handle {
	t.Helper()
	testutil.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // moves this thread into the new namespace
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("could not return to the original namespace: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	return h
}

func TestNetworkRPCsInTestNamespace(t *testing.T) {
	h := testNetNS(t)
	const mac = "02:00:00:c0:7a:01"
	la := netlink.NewLinkAttrs()
	la.Name = "v0"
	la.HardwareAddr, _ = net.ParseMAC(mac)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "v0p"}); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, func(o *agent.Options) { o.Network = network.New(h, o.Logger) })
	got, err := e.c.UpdateInterface(e.ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		HwAddr: mac, Name: "eth0", Mtu: 1400,
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: "10.99.0.2", Mask: "24"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "eth0" || got.Mtu != 1400 || len(got.IPAddresses) != 1 || got.IPAddresses[0].Address != "10.99.0.2" {
		t.Fatalf("UpdateInterface returned %v", got)
	}
	_, err = e.c.UpdateInterface(e.ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{HwAddr: mac, Mtu: 10}})
	wantCode(t, err, codes.InvalidArgument, "mtu")
	rs, err := e.c.UpdateRoutes(e.ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{
		{Dest: "10.98.0.0/16", Gateway: "10.99.0.1", Device: "eth0", Family: types.IPFamily_v4},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rs.Routes {
		if r.Dest == "10.98.0.0/16" && r.Gateway == "10.99.0.1" {
			found = true
		}
	}
	if !found {
		t.Fatalf("route not in %v", rs.Routes)
	}
	if _, err := e.c.AddARPNeighbors(e.ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Family: types.IPFamily_v4, Address: "10.99.0.7"}, Device: "eth0", Lladdr: "02:00:00:00:00:07", State: 128},
	}}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.AddARPNeighbors(e.ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Family: types.IPFamily_v4, Address: "10.99.0.8"}, Device: "nope0", Lladdr: "02:00:00:00:00:08"},
	}}})
	wantCode(t, err, codes.NotFound, "nope0")
	ifs, err := e.c.ListInterfaces(e.ctx, &pb.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, i := range ifs.Interfaces {
		names[i.Name] = true
	}
	if !names["eth0"] || !names["lo"] || len(names) != 3 {
		t.Fatalf("ListInterfaces in the test namespace = %v", names)
	}
}

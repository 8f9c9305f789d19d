package network

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/protocols/types"
)

const testMAC = "02:00:00:00:00:10"

func goodInterface() *types.Interface {
	return &types.Interface{
		Device: "eth0",
		Name:   "eth0",
		IPAddresses: []*types.IPAddress{
			{Family: types.IPFamily_v4, Address: "10.1.0.2", Mask: "24"},
			{Family: types.IPFamily_v6, Address: "2001:db8::2", Mask: "64"},
		},
		Mtu:        1400,
		HwAddr:     testMAC,
		DevicePath: "02/00",
		Type:       "veth",
		RawFlags:   0x80,
	}
}

// wantInvalid asserts err is ErrInvalidArgument and names field.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want invalid argument naming %q", field)
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("error %q is not ErrInvalidArgument", err)
	}
	if !strings.Contains(err.Error(), field+":") {
		t.Fatalf("error %q does not name field %q", err, field)
	}
}

func TestValidateInterface(t *testing.T) {
	if err := ValidateInterface(goodInterface()); err != nil {
		t.Fatalf("good interface rejected: %v", err)
	}
	tests := []struct {
		name  string
		edit  func(*types.Interface)
		field string
	}{
		{"missing MAC", func(i *types.Interface) { i.HwAddr = "" }, "interface.hwAddr"},
		{"bad MAC", func(i *types.Interface) { i.HwAddr = "02:00:00:00:00" }, "interface.hwAddr"},
		{"long MAC", func(i *types.Interface) { i.HwAddr = "02:00:00:00:00:00:00:01" }, "interface.hwAddr"},
		{"zero MAC", func(i *types.Interface) { i.HwAddr = "00:00:00:00:00:00" }, "interface.hwAddr"},
		{"multicast MAC", func(i *types.Interface) { i.HwAddr = "01:00:5e:00:00:01" }, "interface.hwAddr"},
		{"name too long", func(i *types.Interface) { i.Name = "abcdefghijklmnop" }, "interface.name"},
		{"name with slash", func(i *types.Interface) { i.Name = "eth/0" }, "interface.name"},
		{"name with space", func(i *types.Interface) { i.Name = "eth 0" }, "interface.name"},
		{"name with percent", func(i *types.Interface) { i.Name = "eth%d" }, "interface.name"},
		{"name dotdot", func(i *types.Interface) { i.Name = ".." }, "interface.name"},
		{"bad device", func(i *types.Interface) { i.Device = "a:b" }, "interface.device"},
		{"bad type", func(i *types.Interface) { i.Type = "ve th" }, "interface.type"},
		{"bad device path", func(i *types.Interface) { i.DevicePath = "../../x" + strings.Repeat("z", 70) }, "interface.devicePath"},
		{"mtu low", func(i *types.Interface) { i.Mtu = 67 }, "interface.mtu"},
		{"mtu high", func(i *types.Interface) { i.Mtu = 65536 }, "interface.mtu"},
		{"flags other than NOARP", func(i *types.Interface) { i.RawFlags = 0x81 }, "interface.raw_flags"},
		{"nil address", func(i *types.Interface) { i.IPAddresses[1] = nil }, "interface.IPAddresses[1]"},
		{"bad address", func(i *types.Interface) { i.IPAddresses[0].Address = "10.1.0.256" }, "interface.IPAddresses[0].address"},
		{"empty address", func(i *types.Interface) { i.IPAddresses[0].Address = "" }, "interface.IPAddresses[0].address"},
		{"address with zone", func(i *types.Interface) { i.IPAddresses[1].Address = "fe80::1%eth0" }, "interface.IPAddresses[1].address"},
		{"v4-mapped address", func(i *types.Interface) { i.IPAddresses[1].Address = "::ffff:10.0.0.1" }, "interface.IPAddresses[1].address"},
		{"loopback address", func(i *types.Interface) { i.IPAddresses[0].Address = "127.0.0.2" }, "interface.IPAddresses[0].address"},
		{"mask too big v4", func(i *types.Interface) { i.IPAddresses[0].Mask = "33" }, "interface.IPAddresses[0].mask"},
		{"mask too big v6", func(i *types.Interface) { i.IPAddresses[1].Mask = "129" }, "interface.IPAddresses[1].mask"},
		{"mask empty", func(i *types.Interface) { i.IPAddresses[1].Mask = "" }, "interface.IPAddresses[1].mask"},
		{"mask negative", func(i *types.Interface) { i.IPAddresses[1].Mask = "-1" }, "interface.IPAddresses[1].mask"},
		{"mask dotted", func(i *types.Interface) { i.IPAddresses[0].Mask = "255.255.255.0" }, "interface.IPAddresses[0].mask"},
		{"family mismatch", func(i *types.Interface) { i.IPAddresses[1].Family = types.IPFamily_v4 }, "interface.IPAddresses[1].family"},
		{"family unknown", func(i *types.Interface) { i.IPAddresses[0].Family = 7 }, "interface.IPAddresses[0].family"},
		{"too many addresses", func(i *types.Interface) {
			for range MaxAddresses {
				i.IPAddresses = append(i.IPAddresses, &types.IPAddress{Address: "10.0.0.1", Mask: "8"})
			}
		}, "interface.IPAddresses"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			i := goodInterface()
			tc.edit(i)
			wantInvalid(t, ValidateInterface(i), tc.field)
		})
	}
	t.Run("nil", func(t *testing.T) { wantInvalid(t, ValidateInterface(nil), "interface") })
}

func TestParseInterfaceValues(t *testing.T) {
	i := goodInterface()
	i.IPAddresses = append(i.IPAddresses, &types.IPAddress{Family: types.IPFamily_v4, Address: "10.1.0.2", Mask: "24"})
	i.Mtu = 0
	i.Name = ""
	i.HwAddr = "02-00-00-00-00-10"
	r, err := parseInterface(i)
	if err != nil {
		t.Fatal(err)
	}
	if r.mac.String() != testMAC || r.mtu != 0 || r.name != "" || !r.noARP {
		t.Errorf("parsed %+v", r)
	}
	if len(r.addrs) != 2 || r.addrs[0].String() != "10.1.0.2/24" || r.addrs[1].String() != "2001:db8::2/64" {
		t.Errorf("addresses %v, want 10.1.0.2/24 and 2001:db8::2/64 once each", r.addrs)
	}
}

func goodRoutes() []*types.Route {
	return []*types.Route{
		{Gateway: "10.1.0.1", Device: "eth0"},
		{Dest: "10.1.0.0/24", Device: "eth0", Source: "10.1.0.2", Scope: 253},
		{Dest: "2001:db8::/64", Device: "eth0", Family: types.IPFamily_v6, Mtu: 1280},
		{Dest: "::/0", Gateway: "2001:db8::1", Device: "eth0", Family: types.IPFamily_v6, Flags: 0x10},
		{Dest: "192.0.2.7", Gateway: "10.1.0.1", Device: "eth0", Flags: 0x4},
	}
}

func TestValidateRoutes(t *testing.T) {
	if err := ValidateRoutes(goodRoutes()); err != nil {
		t.Fatalf("good routes rejected: %v", err)
	}
	if err := ValidateRoutes(nil); err != nil {
		t.Fatalf("empty route list rejected: %v", err)
	}
	tests := []struct {
		name  string
		edit  func([]*types.Route) []*types.Route
		field string
	}{
		{"nil route", func(r []*types.Route) []*types.Route { r[2] = nil; return r }, "routes[2]"},
		{"bad dest", func(r []*types.Route) []*types.Route { r[1].Dest = "10.1.0/24"; return r }, "routes[1].dest"},
		{"dest mask too big", func(r []*types.Route) []*types.Route { r[1].Dest = "10.1.0.0/40"; return r }, "routes[1].dest"},
		{"dest host bits", func(r []*types.Route) []*types.Route { r[1].Dest = "10.1.0.1/24"; return r }, "routes[1].dest"},
		{"dest family mismatch", func(r []*types.Route) []*types.Route { r[1].Family = types.IPFamily_v6; return r }, "routes[1].dest"},
		{"unknown family", func(r []*types.Route) []*types.Route { r[0].Family = 2; return r }, "routes[0].family"},
		{"bad gateway", func(r []*types.Route) []*types.Route { r[0].Gateway = "gw"; return r }, "routes[0].gateway"},
		{"gateway family", func(r []*types.Route) []*types.Route { r[3].Gateway = "10.0.0.1"; return r }, "routes[3].gateway"},
		{"loopback gateway", func(r []*types.Route) []*types.Route { r[0].Gateway = "127.0.0.1"; return r }, "routes[0].gateway"},
		{"loopback source", func(r []*types.Route) []*types.Route { r[1].Source = "127.0.0.1"; return r }, "routes[1].source"},
		{"source prefix", func(r []*types.Route) []*types.Route { r[1].Source = "10.1.0.0/24"; return r }, "routes[1].source"},
		{"no device", func(r []*types.Route) []*types.Route { r[0].Device = ""; return r }, "routes[0].device"},
		{"bad device", func(r []*types.Route) []*types.Route { r[0].Device = "eth0\n"; return r }, "routes[0].device"},
		{"scope too big", func(r []*types.Route) []*types.Route { r[1].Scope = 256; return r }, "routes[1].scope"},
		{"unsupported flag", func(r []*types.Route) []*types.Route { r[0].Flags = 0x100; return r }, "routes[0].flags"},
		{"mtu low", func(r []*types.Route) []*types.Route { r[2].Mtu = 10; return r }, "routes[2].mtu"},
		{"too many", func(r []*types.Route) []*types.Route {
			return append(r, make([]*types.Route, MaxRoutes)...)
		}, "routes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantInvalid(t, ValidateRoutes(tc.edit(goodRoutes())), tc.field)
		})
	}
}

func TestParseRouteValues(t *testing.T) {
	rs, err := parseRoutes(goodRoutes())
	if err != nil {
		t.Fatal(err)
	}
	if got := rs[0].dst.String(); got != "0.0.0.0/0" {
		t.Errorf("default v4 dest = %s", got)
	}
	if got := rs[3].dst.String(); got != "::/0" {
		t.Errorf("default v6 dest = %s", got)
	}
	if rs[3].flags != 0 {
		t.Errorf("linkdown status flag kept: %#x", rs[3].flags)
	}
	if got := rs[4].dst.String(); got != "192.0.2.7/32" || rs[4].flags != 4 {
		t.Errorf("host route = %s flags %#x, want 192.0.2.7/32 onlink", got, rs[4].flags)
	}
	if rs[1].src.String() != "10.1.0.2" || rs[1].scope != 253 {
		t.Errorf("source/scope = %s/%d", rs[1].src, rs[1].scope)
	}
}

func goodNeighbors() []*types.ARPNeighbor {
	return []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Address: "10.1.0.1"}, Device: "eth0", Lladdr: "02:00:00:00:00:01", State: 0x80},
		{ToIPAddress: &types.IPAddress{Family: types.IPFamily_v6, Address: "2001:db8::1", Mask: "128"}, Device: "eth0", Lladdr: "02:00:00:00:00:01", State: 2, Flags: 0x80},
		{ToIPAddress: &types.IPAddress{Address: "10.1.0.9"}, Device: "eth0", Flags: 0x8}, // proxy: no lladdr needed
	}
}

func TestValidateARPNeighbors(t *testing.T) {
	if err := ValidateARPNeighbors(goodNeighbors()); err != nil {
		t.Fatalf("good neighbours rejected: %v", err)
	}
	tests := []struct {
		name  string
		edit  func([]*types.ARPNeighbor)
		field string
	}{
		{"nil entry", func(n []*types.ARPNeighbor) { n[1] = nil }, "neighbors[1]"},
		{"no address", func(n []*types.ARPNeighbor) { n[0].ToIPAddress = nil }, "neighbors[0].toIPAddress"},
		{"bad address", func(n []*types.ARPNeighbor) { n[0].ToIPAddress.Address = "x" }, "neighbors[0].toIPAddress.address"},
		{"loopback address", func(n []*types.ARPNeighbor) { n[0].ToIPAddress.Address = "127.0.0.1" }, "neighbors[0].toIPAddress.address"},
		{"family mismatch", func(n []*types.ARPNeighbor) { n[1].ToIPAddress.Family = types.IPFamily_v4 }, "neighbors[1].toIPAddress.family"},
		{"network mask", func(n []*types.ARPNeighbor) { n[0].ToIPAddress.Mask = "24" }, "neighbors[0].toIPAddress.mask"},
		{"no device", func(n []*types.ARPNeighbor) { n[2].Device = "" }, "neighbors[2].device"},
		{"no lladdr", func(n []*types.ARPNeighbor) { n[0].Lladdr = "" }, "neighbors[0].lladdr"},
		{"bad lladdr", func(n []*types.ARPNeighbor) { n[0].Lladdr = "zz:00:00:00:00:01" }, "neighbors[0].lladdr"},
		{"two states", func(n []*types.ARPNeighbor) { n[0].State = 0x82 }, "neighbors[0].state"},
		{"state too big", func(n []*types.ARPNeighbor) { n[0].State = 0x100 }, "neighbors[0].state"},
		{"negative state", func(n []*types.ARPNeighbor) { n[0].State = -1 }, "neighbors[0].state"},
		{"bad flags", func(n []*types.ARPNeighbor) { n[0].Flags = 0x1 }, "neighbors[0].flags"},
		{"negative flags", func(n []*types.ARPNeighbor) { n[0].Flags = -128 }, "neighbors[0].flags"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := goodNeighbors()
			tc.edit(n)
			wantInvalid(t, ValidateARPNeighbors(n), tc.field)
		})
	}
}

func TestClipLongInput(t *testing.T) {
	long := strings.Repeat("a", 5000)
	err := ValidateInterface(&types.Interface{HwAddr: testMAC, Name: long})
	wantInvalid(t, err, "interface.name")
	if len(err.Error()) > 300 {
		t.Errorf("error echoes %d bytes of host input", len(err.Error()))
	}
}

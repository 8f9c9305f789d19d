package network

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/protocols/types"
)

// Limits on list lengths in one request. They are far above what a pod
// needs and keep a hostile host from making the agent do unbounded work.
const (
	MaxAddresses = 256  // addresses on one interface
	MaxRoutes    = 4096 // routes in one UpdateRoutes request
	MaxNeighbors = 4096 // entries in one AddARPNeighbors request
)

// MTU bounds for interfaces and routes; 0 means "leave unchanged" or "no
// route MTU".
const (
	MinMTU = 68
	MaxMTU = 65535
)

// maxIfNameLen is IFNAMSIZ-1.
const maxIfNameLen = 15

// Route flags. onlink is the only one a request may set. The status bits
// describe the host's copy of a route (the shim copies them from there);
// they cannot be set and are dropped.
const (
	routeFlagsSettable = unix.RTNH_F_ONLINK
	routeFlagsStatus   = unix.RTNH_F_DEAD | unix.RTNH_F_LINKDOWN | unix.RTNH_F_OFFLOAD |
		unix.RTNH_F_UNRESOLVED | unix.RTNH_F_TRAP |
		unix.RTM_F_OFFLOAD | unix.RTM_F_TRAP | unix.RTM_F_OFFLOAD_FAILED
)

// neighFlagsAllowed are the NTF_* flags a request may set: proxy and router.
// The same set is what the kata genpolicy default allows.
const neighFlagsAllowed = unix.NTF_PROXY | unix.NTF_ROUTER

// ifaceRequest is a checked UpdateInterface request.
type ifaceRequest struct {
	mac   net.HardwareAddr
	name  string // "" keeps the current name
	mtu   int    // 0 keeps the current MTU
	noARP bool
	addrs []netip.Prefix // host address plus prefix length, not masked
}

// routeRequest is one checked route.
type routeRequest struct {
	index  int // position in the request, for messages
	dst    netip.Prefix
	gw     netip.Addr // invalid when there is no gateway
	src    netip.Addr // preferred source; invalid when unset
	device string
	scope  uint8
	flags  int
	mtu    int
}

// neighRequest is one checked ARP/ND entry.
type neighRequest struct {
	index  int
	ip     netip.Addr
	device string
	lladdr net.HardwareAddr // nil when unset
	state  int
	flags  int
}

// ValidateInterface checks an UpdateInterface request without touching the
// network. UpdateInterface runs the same checks.
func ValidateInterface(iface *types.Interface) error {
	_, err := parseInterface(iface)
	return err
}

// ValidateRoutes checks an UpdateRoutes request without touching the
// network. UpdateRoutes runs the same checks.
func ValidateRoutes(routes []*types.Route) error {
	_, err := parseRoutes(routes)
	return err
}

// ValidateARPNeighbors checks an AddARPNeighbors request without touching
// the network. AddARPNeighbors runs the same checks.
func ValidateARPNeighbors(neighs []*types.ARPNeighbor) error {
	_, err := parseNeighbors(neighs)
	return err
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// clip shortens host-supplied text before it goes into an error or a log.
func clip(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}

func parseInterface(iface *types.Interface) (*ifaceRequest, error) {
	if iface == nil {
		return nil, invalid("interface", "missing")
	}
	req := &ifaceRequest{}

	mac, err := parseMAC("interface.hwAddr", iface.GetHwAddr())
	if err != nil {
		return nil, err
	}
	if mac == nil {
		return nil, invalid("interface.hwAddr", "missing")
	}
	if isZero(mac) || mac[0]&1 != 0 {
		return nil, invalid("interface.hwAddr", "%s is not a unicast MAC address", mac)
	}
	req.mac = mac

	if d := iface.GetDevice(); d != "" && !validIfName(d) {
		return nil, invalid("interface.device", "%q is not a valid interface name", clip(d))
	}
	if n := iface.GetName(); n != "" {
		if !validIfName(n) {
			return nil, invalid("interface.name", "%q is not a valid interface name (1..%d of A-Z a-z 0-9 _ . -)", clip(n), maxIfNameLen)
		}
		req.name = n
	}
	if t := iface.GetType(); len(t) > 32 || !onlyChars(t, isNameChar) {
		return nil, invalid("interface.type", "%q is not a valid type", clip(t))
	}
	if p := iface.GetDevicePath(); len(p) > 64 || !onlyChars(p, isPathChar) {
		return nil, invalid("interface.devicePath", "%q is not a PCI or CCW path", clip(p))
	}

	switch mtu := iface.GetMtu(); {
	case mtu == 0:
	case mtu < MinMTU || mtu > MaxMTU:
		return nil, invalid("interface.mtu", "%d is outside %d..%d", mtu, MinMTU, MaxMTU)
	default:
		req.mtu = int(mtu)
	}

	flags := iface.GetRawFlags()
	if flags&^uint32(unix.IFF_NOARP) != 0 {
		return nil, invalid("interface.raw_flags", "%#x has flags other than IFF_NOARP (%#x)", flags, unix.IFF_NOARP)
	}
	req.noARP = flags != 0

	addrs := iface.GetIPAddresses()
	if len(addrs) > MaxAddresses {
		return nil, invalid("interface.IPAddresses", "%d addresses, at most %d allowed", len(addrs), MaxAddresses)
	}
	seen := make(map[netip.Prefix]bool, len(addrs))
	for i, a := range addrs {
		field := fmt.Sprintf("interface.IPAddresses[%d]", i)
		if a == nil {
			return nil, invalid(field, "missing")
		}
		ip, err := parseIP(field+".address", a.GetAddress())
		if err != nil {
			return nil, err
		}
		if err := checkFamily(field+".family", a.GetFamily(), ip); err != nil {
			return nil, err
		}
		if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
			return nil, invalid(field+".address", "%s cannot be assigned to an interface", ip)
		}
		bits, err := parseMask(field+".mask", a.GetMask(), ip.BitLen())
		if err != nil {
			return nil, err
		}
		p := netip.PrefixFrom(ip, bits)
		if !seen[p] {
			seen[p] = true
			req.addrs = append(req.addrs, p)
		}
	}
	return req, nil
}

func parseRoutes(routes []*types.Route) ([]routeRequest, error) {
	if len(routes) > MaxRoutes {
		return nil, invalid("routes", "%d routes, at most %d allowed", len(routes), MaxRoutes)
	}
	out := make([]routeRequest, 0, len(routes))
	for i, r := range routes {
		rr, err := parseRoute(i, r)
		if err != nil {
			return nil, err
		}
		out = append(out, rr)
	}
	return out, nil
}

func parseRoute(i int, r *types.Route) (routeRequest, error) {
	field := fmt.Sprintf("routes[%d]", i)
	rr := routeRequest{index: i}
	if r == nil {
		return rr, invalid(field, "missing")
	}

	var v6 bool
	switch r.GetFamily() {
	case types.IPFamily_v4:
	case types.IPFamily_v6:
		v6 = true
	default:
		return rr, invalid(field+".family", "unknown family %d", int32(r.GetFamily()))
	}
	bitLen := 32
	if v6 {
		bitLen = 128
	}
	sameFamily := func(f string, a netip.Addr) error {
		if a.Is6() != v6 {
			return invalid(f, "%s does not match family %s", a, r.GetFamily())
		}
		return nil
	}

	if d := r.GetDest(); d == "" {
		if v6 {
			rr.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		} else {
			rr.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
	} else {
		p, err := parsePrefix(field+".dest", d)
		if err != nil {
			return rr, err
		}
		if err := sameFamily(field+".dest", p.Addr()); err != nil {
			return rr, err
		}
		if p.Masked() != p {
			return rr, invalid(field+".dest", "%q has host bits set (network is %s)", clip(d), p.Masked())
		}
		rr.dst = p
	}

	if g := r.GetGateway(); g != "" {
		ip, err := parseIP(field+".gateway", g)
		if err != nil {
			return rr, err
		}
		if err := sameFamily(field+".gateway", ip); err != nil {
			return rr, err
		}
		if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
			return rr, invalid(field+".gateway", "%s cannot be a gateway", ip)
		}
		rr.gw = ip
	}

	if s := r.GetSource(); s != "" {
		p, err := parsePrefix(field+".source", s)
		if err != nil {
			return rr, err
		}
		if err := sameFamily(field+".source", p.Addr()); err != nil {
			return rr, err
		}
		// The source is the preferred source address. A real prefix
		// would ask for source-specific routing, which we do not offer.
		if p.Bits() != 0 && p.Bits() != bitLen {
			return rr, invalid(field+".source", "%q: source-prefix routing is not supported; give an address", clip(s))
		}
		ip := p.Addr()
		if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
			return rr, invalid(field+".source", "%s cannot be a source address", ip)
		}
		rr.src = ip
	}

	dev := r.GetDevice()
	if dev == "" {
		return rr, invalid(field+".device", "missing")
	}
	if !validIfName(dev) {
		return rr, invalid(field+".device", "%q is not a valid interface name", clip(dev))
	}
	rr.device = dev

	scope := r.GetScope()
	if scope > 255 {
		return rr, invalid(field+".scope", "%d is not a route scope (0..255)", scope)
	}
	rr.scope = uint8(scope)

	flags := r.GetFlags()
	if extra := flags &^ uint32(routeFlagsSettable|routeFlagsStatus); extra != 0 {
		return rr, invalid(field+".flags", "%#x has unsupported flags %#x (only onlink %#x may be set)", flags, extra, unix.RTNH_F_ONLINK)
	}
	rr.flags = int(flags & routeFlagsSettable)

	mtu := r.GetMtu()
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return rr, invalid(field+".mtu", "%d is outside %d..%d", mtu, MinMTU, MaxMTU)
	}
	rr.mtu = int(mtu)
	return rr, nil
}

func parseNeighbors(neighs []*types.ARPNeighbor) ([]neighRequest, error) {
	if len(neighs) > MaxNeighbors {
		return nil, invalid("neighbors", "%d entries, at most %d allowed", len(neighs), MaxNeighbors)
	}
	out := make([]neighRequest, 0, len(neighs))
	for i, n := range neighs {
		field := fmt.Sprintf("neighbors[%d]", i)
		if n == nil {
			return nil, invalid(field, "missing")
		}
		nr := neighRequest{index: i}

		to := n.GetToIPAddress()
		if to == nil {
			return nil, invalid(field+".toIPAddress", "missing")
		}
		ip, err := parseIP(field+".toIPAddress.address", to.GetAddress())
		if err != nil {
			return nil, err
		}
		if err := checkFamily(field+".toIPAddress.family", to.GetFamily(), ip); err != nil {
			return nil, err
		}
		if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
			return nil, invalid(field+".toIPAddress.address", "%s cannot be a neighbour", ip)
		}
		// A neighbour is one host: the mask is empty (as the shim sends
		// it) or the full length.
		if m := to.GetMask(); m != "" {
			bits, err := parseMask(field+".toIPAddress.mask", m, ip.BitLen())
			if err != nil {
				return nil, err
			}
			if bits != ip.BitLen() {
				return nil, invalid(field+".toIPAddress.mask", "%q: a neighbour is a single address", clip(m))
			}
		}
		nr.ip = ip

		dev := n.GetDevice()
		if dev == "" {
			return nil, invalid(field+".device", "missing")
		}
		if !validIfName(dev) {
			return nil, invalid(field+".device", "%q is not a valid interface name", clip(dev))
		}
		nr.device = dev

		mac, err := parseMAC(field+".lladdr", n.GetLladdr())
		if err != nil {
			return nil, err
		}
		nr.lladdr = mac

		switch st := n.GetState(); {
		case st == 0:
			nr.state = unix.NUD_PERMANENT
		case st > 0 && st <= unix.NUD_PERMANENT && st&(st-1) == 0:
			nr.state = int(st)
		default:
			return nil, invalid(field+".state", "%d is not a single NUD_* state", st)
		}

		flags := n.GetFlags()
		if flags < 0 || flags&^neighFlagsAllowed != 0 {
			return nil, invalid(field+".flags", "%#x has flags other than NTF_PROXY|NTF_ROUTER (%#x)", flags, neighFlagsAllowed)
		}
		nr.flags = int(flags)
		// A new ARP/ND entry needs a link-layer address; only proxy
		// entries go without one (the kernel refuses the rest).
		if nr.lladdr == nil && flags&unix.NTF_PROXY == 0 {
			return nil, invalid(field+".lladdr", "missing (required unless flags has NTF_PROXY)")
		}
		out = append(out, nr)
	}
	return out, nil
}

// parseMAC parses a 6-byte MAC address; "" gives nil.
func parseMAC(field, s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, invalid(field, "%q is not a 6-byte MAC address", clip(s))
	}
	return mac, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// parseIP parses a plain IPv4 or IPv6 address. Zones and IPv4-mapped IPv6
// forms are refused so that each address has exactly one family.
func parseIP(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, invalid(field, "missing")
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, invalid(field, "%q is not an IP address", clip(s))
	}
	if ip.Zone() != "" {
		return netip.Addr{}, invalid(field, "%q: zones are not allowed", clip(s))
	}
	if ip.Is4In6() {
		return netip.Addr{}, invalid(field, "%q: IPv4-mapped IPv6 addresses are not allowed", clip(s))
	}
	return ip, nil
}

// parsePrefix parses "addr" (a host prefix) or "addr/len".
func parsePrefix(field, s string) (netip.Prefix, error) {
	addr, mask, hasMask := strings.Cut(s, "/")
	ip, err := parseIP(field, addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits := ip.BitLen()
	if hasMask {
		if bits, err = parseMask(field, mask, ip.BitLen()); err != nil {
			return netip.Prefix{}, err
		}
	}
	return netip.PrefixFrom(ip, bits), nil
}

// parseMask parses a prefix length written as decimal text, as kata sends it.
func parseMask(field, s string, bitLen int) (int, error) {
	if s == "" || len(s) > 3 || !onlyChars(s, func(c byte) bool { return c >= '0' && c <= '9' }) {
		return 0, invalid(field, "%q is not a prefix length 0..%d", clip(s), bitLen)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > bitLen {
		return 0, invalid(field, "%q is not a prefix length 0..%d", clip(s), bitLen)
	}
	return n, nil
}

func checkFamily(field string, f types.IPFamily, ip netip.Addr) error {
	switch f {
	case types.IPFamily_v4, types.IPFamily_v6:
	default:
		return invalid(field, "unknown family %d", int32(f))
	}
	if (f == types.IPFamily_v6) != ip.Is6() {
		return invalid(field, "%s does not match address %s", f, ip)
	}
	return nil
}

// validIfName accepts names the kernel takes (1..15 bytes, not "." or "..")
// restricted to a portable character set.
func validIfName(s string) bool {
	if s == "" || len(s) > maxIfNameLen || s == "." || s == ".." {
		return false
	}
	return onlyChars(s, isNameChar)
}

func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// isPathChar accepts PCI paths ("02/03") and CCW bus ids ("0.0.0004").
func isPathChar(c byte) bool {
	return c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c >= '0' && c <= '9' || c == '/' || c == '.' || c == ':'
}

func onlyChars(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

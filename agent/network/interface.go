package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/protocols/types"
)

// UpdateInterface configures the link whose MAC address is iface.HwAddr. It
// waits up to the link timeout for that link to appear (hot-plugged NICs
// show up late). It then sets the name, the MTU and IFF_NOARP, replaces the
// link's addresses with iface.IPAddresses, and brings the link up.
//
// The result describes the link afterwards. Device, DevicePath and Type are
// copied from the request, because they describe the host's side.
func (m *Manager) UpdateInterface(ctx context.Context, iface *types.Interface) (*types.Interface, error) {
	req, err := parseInterface(iface)
	if err != nil {
		return nil, fmt.Errorf("update interface: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("update interface: %w", err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	link, err := m.waitLinkByMAC(ctx, req.mac, iface.GetDevice())
	if err != nil {
		return nil, fmt.Errorf("update interface: %w", err)
	}
	oldName := link.Attrs().Name
	if err := m.applyInterface(ctx, link, req); err != nil {
		return nil, fmt.Errorf("update interface %s (%s): %w", oldName, req.mac, err)
	}

	out, err := m.describeLink(link.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("update interface %s (%s): %w", oldName, req.mac, err)
	}
	out.Device = iface.GetDevice()
	out.DevicePath = iface.GetDevicePath()
	out.Type = iface.GetType()
	m.log.InfoContext(ctx, "updated interface", "hwaddr", req.mac.String(), "old_name", oldName,
		"name", out.Name, "mtu", out.Mtu, "noarp", req.noARP, "addresses", len(out.IPAddresses))
	return out, nil
}

func (m *Manager) applyInterface(ctx context.Context, link netlink.Link, req *ifaceRequest) error {
	attrs := link.Attrs()
	rename := req.name != "" && req.name != attrs.Name
	var holder netlink.Link // the other link that has the requested name, if any
	if rename {
		var err error
		if holder, err = m.nameHolder(link, req.name); err != nil {
			return err
		}
	}
	if isUp(link) {
		if err := m.h.LinkSetDown(link); err != nil {
			return fmt.Errorf("setting link down: %w", err)
		}
	}
	if err := m.replaceAddresses(ctx, link, req.addrs); err != nil {
		return err
	}
	if rename {
		if err := m.rename(ctx, link, holder, req.name); err != nil {
			return err
		}
	}
	if req.mtu != 0 && req.mtu != attrs.MTU {
		if err := m.h.LinkSetMTU(link, req.mtu); err != nil {
			return fmt.Errorf("setting MTU %d: %w", req.mtu, err)
		}
	}
	if noARP := attrs.RawFlags&unix.IFF_NOARP != 0; noARP != req.noARP {
		var err error
		if req.noARP {
			err = m.h.LinkSetARPOff(link)
		} else {
			err = m.h.LinkSetARPOn(link)
		}
		if err != nil {
			return fmt.Errorf("setting IFF_NOARP=%t: %w", req.noARP, err)
		}
	}
	if err := m.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting link up: %w", err)
	}
	return nil
}

// replaceAddresses makes want the link's address set. IPv6 link-local
// addresses are left alone: the kernel makes them and neighbour discovery
// needs them.
func (m *Manager) replaceAddresses(ctx context.Context, link netlink.Link, want []netip.Prefix) error {
	cur, err := retryDump(func() ([]netlink.Addr, error) { return m.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("listing addresses: %w", err)
	}
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		wanted[p] = true
	}
	for _, a := range cur {
		p, ok := addrPrefix(a)
		if !ok || wanted[p] || p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		del := &netlink.Addr{IPNet: a.IPNet, Peer: a.Peer}
		// Deleting a primary IPv4 address can take its secondaries with
		// it; those are gone already, which is fine.
		if err := m.h.AddrDel(link, del); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing address %s: %w", p, err)
		}
		m.log.DebugContext(ctx, "removed address", "link", link.Attrs().Name, "address", p.String())
	}
	for _, p := range want {
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if err := m.h.AddrReplace(link, a); err != nil {
			if p.Addr().Is6() && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT)) {
				// IPv6 is disabled in this guest. kata skips such
				// addresses so that dual-stack pods still start.
				m.log.WarnContext(ctx, "IPv6 disabled; skipping address", "link", link.Attrs().Name,
					"address", p.String(), "error", err)
				continue
			}
			return fmt.Errorf("adding address %s: %w", p, err)
		}
	}
	return nil
}

// nameHolder returns the link other than link that is called name, or nil.
// The loopback link's name is never taken over.
func (m *Manager) nameHolder(link netlink.Link, name string) (netlink.Link, error) {
	other, err := retryDump(func() (netlink.Link, error) { return m.h.LinkByName(name) })
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return nil, nil
		}
		return nil, fmt.Errorf("looking up link %q: %w", name, err)
	}
	if other.Attrs().Index == link.Attrs().Index {
		return nil, nil
	}
	if isLoopback(other) {
		return nil, invalid("interface.name", "%q is the name of the loopback link", name)
	}
	return other, nil
}

// rename gives link the name. If another link (other) holds it, the two
// links swap names, as kata does.
func (m *Manager) rename(ctx context.Context, link, other netlink.Link, name string) error {
	if other == nil {
		if err := m.h.LinkSetName(link, name); err != nil {
			return fmt.Errorf("renaming to %q: %w", name, err)
		}
		return nil
	}
	oldName := link.Attrs().Name
	wasUp := isUp(other)
	if wasUp {
		if err := m.h.LinkSetDown(other); err != nil {
			return fmt.Errorf("setting link %q down to free its name: %w", name, err)
		}
	}
	// "cvt" plus an ifindex fits in 15 bytes; ifindexes are unique, so no
	// other link has this name unless someone chose it on purpose.
	tmp := "cvt" + strconv.Itoa(other.Attrs().Index)
	if err := m.h.LinkSetName(other, tmp); err != nil {
		return fmt.Errorf("renaming link %q to %q to free its name: %w", name, tmp, err)
	}
	if err := m.h.LinkSetName(link, name); err != nil {
		if rerr := m.h.LinkSetName(other, name); rerr != nil {
			m.log.ErrorContext(ctx, "could not restore link name", "link", tmp, "name", name, "error", rerr)
		}
		return fmt.Errorf("renaming to %q: %w", name, err)
	}
	if err := m.h.LinkSetName(other, oldName); err != nil {
		return fmt.Errorf("renaming link %q (was %q) to %q: %w", tmp, name, oldName, err)
	}
	if wasUp {
		if err := m.h.LinkSetUp(other); err != nil {
			return fmt.Errorf("setting link %q up again: %w", oldName, err)
		}
	}
	m.log.InfoContext(ctx, "swapped interface names", "name", name, "other", oldName)
	return nil
}

// ListInterfaces returns every link in the namespace with its addresses,
// in kernel order (loopback included, as kata does).
func (m *Manager) ListInterfaces(ctx context.Context) ([]*types.Interface, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	links, err := m.links()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list interfaces: listing addresses: %w", err)
	}
	byLink := make(map[int][]netlink.Addr)
	for _, a := range addrs {
		byLink[a.LinkIndex] = append(byLink[a.LinkIndex], a)
	}
	out := make([]*types.Interface, 0, len(links))
	for _, l := range links {
		out = append(out, toInterface(l, byLink[l.Attrs().Index]))
	}
	return out, nil
}

func (m *Manager) describeLink(index int) (*types.Interface, error) {
	link, err := m.h.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("reading link %d back: %w", index, err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("reading addresses of link %d back: %w", index, err)
	}
	return toInterface(link, addrs), nil
}

// toInterface fills the fields kata's ListInterfaces fills (name, hwAddr,
// mtu, IPAddresses) plus raw_flags limited to IFF_NOARP, the one flag
// UpdateInterface sets.
func toInterface(link netlink.Link, addrs []netlink.Addr) *types.Interface {
	a := link.Attrs()
	hw := a.HardwareAddr.String()
	if hw == "" && (a.EncapType == "loopback" || a.EncapType == "ether") {
		// netlink drops all-zero addresses; kata reports them.
		hw = "00:00:00:00:00:00"
	}
	iface := &types.Interface{
		Name:     a.Name,
		HwAddr:   hw,
		Mtu:      uint64(a.MTU),
		RawFlags: a.RawFlags & unix.IFF_NOARP,
	}
	for _, ad := range addrs {
		p, ok := addrPrefix(ad)
		if !ok {
			continue
		}
		fam := types.IPFamily_v4
		if p.Addr().Is6() {
			fam = types.IPFamily_v6
		}
		iface.IPAddresses = append(iface.IPAddresses, &types.IPAddress{
			Family:  fam,
			Address: p.Addr().String(),
			Mask:    strconv.Itoa(p.Bits()),
		})
	}
	return iface
}

// addrPrefix turns a netlink address into host address plus prefix length.
func addrPrefix(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := a.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

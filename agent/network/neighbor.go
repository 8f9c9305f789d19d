package network

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/cova-project/cova/protocols/types"
)

// AddARPNeighbors adds or replaces ARP (IPv4) and neighbour-discovery (IPv6)
// entries. State 0 means NUD_PERMANENT, as in kata. The whole request is
// checked, and every device looked up, before any entry is written.
func (m *Manager) AddARPNeighbors(ctx context.Context, neighs []*types.ARPNeighbor) error {
	reqs, err := parseNeighbors(neighs)
	if err != nil {
		return fmt.Errorf("add ARP neighbors: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("add ARP neighbors: %w", err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	links, err := m.links()
	if err != nil {
		return fmt.Errorf("add ARP neighbors: %w", err)
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	entries := make([]*netlink.Neigh, 0, len(reqs))
	for _, n := range reqs {
		field := fmt.Sprintf("neighbors[%d].device", n.index)
		l := byName[n.device]
		if l == nil {
			return fmt.Errorf("add ARP neighbors: %s: link %q not found: %w", field, n.device, errdefs.ErrNotFound)
		}
		if isLoopback(l) {
			return fmt.Errorf("add ARP neighbors: %w", invalid(field, "%q is a loopback link", n.device))
		}
		fam := netlink.FAMILY_V4
		if n.ip.Is6() {
			fam = netlink.FAMILY_V6
		}
		entries = append(entries, &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       fam,
			State:        n.state,
			Flags:        n.flags,
			IP:           n.ip.AsSlice(),
			HardwareAddr: n.lladdr,
		})
	}

	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("add ARP neighbors: %w", err)
		}
		if err := m.h.NeighSet(e); err != nil {
			return fmt.Errorf("add ARP neighbors: neighbors[%d]: adding %s dev %s: %w",
				reqs[i].index, reqs[i].ip, reqs[i].device, err)
		}
	}
	m.log.InfoContext(ctx, "added ARP neighbors", "count", len(entries))
	return nil
}

package network

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/protocols/types"
)

// UpdateRoutes makes routes the main-table routes of the non-loopback
// links. It deletes the existing routes there that the kernel did not
// make, then adds the requested ones: routes without a gateway first,
// because a gateway must be reachable when its route is added. Routes on
// loopback, routes without an output device (such as multipath and
// blackhole routes) and kernel routes are kept.
//
// The whole request is checked, and every device looked up, before any
// route is touched. If adding a route fails, the routes deleted are put
// back as far as possible and the error names the failing route.
// UpdateRoutes returns ListRoutes after the update.
func (m *Manager) UpdateRoutes(ctx context.Context, routes []*types.Route) ([]*types.Route, error) {
	reqs, err := parseRoutes(routes)
	if err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	links, err := m.links()
	if err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}

	ordered := make([]routeRequest, 0, len(reqs))
	for _, r := range reqs {
		if !r.gw.IsValid() {
			ordered = append(ordered, r)
		}
	}
	for _, r := range reqs {
		if r.gw.IsValid() {
			ordered = append(ordered, r)
		}
	}
	add := make([]*netlink.Route, 0, len(ordered))
	for _, r := range ordered {
		l := byName[r.device]
		if l == nil {
			return nil, fmt.Errorf("update routes: routes[%d].device: link %q not found: %w", r.index, r.device, errdefs.ErrNotFound)
		}
		if isLoopback(l) {
			return nil, fmt.Errorf("update routes: %w", invalid(fmt.Sprintf("routes[%d].device", r.index), "%q is a loopback link", r.device))
		}
		add = append(add, toNetlinkRoute(r, l.Attrs().Index))
	}

	old, err := m.replaceableRoutes()
	if err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	if err := m.deleteRoutes(old); err != nil {
		m.restoreRoutes(ctx, old)
		return nil, fmt.Errorf("update routes: %w", err)
	}
	for i, nr := range add {
		if err := m.h.RouteReplace(nr); err != nil {
			r := ordered[i]
			m.log.WarnContext(ctx, "adding a route failed; restoring the previous routes",
				"route", r.index, "dest", r.dst.String(), "device", r.device, "error", err)
			m.restoreRoutes(ctx, old)
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
				err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("update routes: routes[%d]: adding %s: %w", r.index, describeRoute(r), err)
		}
	}

	list, err := m.listRoutes()
	if err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	m.log.InfoContext(ctx, "updated routes", "removed", len(old), "added", len(add))
	return list, nil
}

func describeRoute(r routeRequest) string {
	s := r.dst.String()
	if r.gw.IsValid() {
		s += " via " + r.gw.String()
	}
	s += " dev " + r.device
	if r.src.IsValid() {
		s += " src " + r.src.String()
	}
	return s
}

func toNetlinkRoute(r routeRequest, linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       prefixToIPNet(r.dst),
		Scope:     netlink.Scope(r.scope),
		Protocol:  unix.RTPROT_BOOT,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
		Flags:     r.flags,
		MTU:       r.mtu,
	}
	if r.gw.IsValid() {
		nr.Gw = r.gw.AsSlice()
	}
	if r.src.IsValid() {
		nr.Src = r.src.AsSlice()
	}
	return nr
}

// mainRoutes lists the main-table IPv4 and IPv6 routes.
func (m *Manager) mainRoutes() ([]netlink.Route, error) {
	var all []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := retryDump(func() ([]netlink.Route, error) { return m.h.RouteList(nil, fam) })
		if err != nil {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		all = append(all, rs...)
	}
	return all, nil
}

// replaceableRoutes lists the routes UpdateRoutes owns: main table, not
// made by the kernel, with an output device that is not loopback.
func (m *Manager) replaceableRoutes() ([]netlink.Route, error) {
	routes, err := m.mainRoutes()
	if err != nil {
		return nil, err
	}
	links, err := m.links()
	if err != nil {
		return nil, err
	}
	loop := make(map[int]bool, len(links))
	known := make(map[int]bool, len(links))
	for _, l := range links {
		known[l.Attrs().Index] = true
		loop[l.Attrs().Index] = isLoopback(l)
	}
	var out []netlink.Route
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.LinkIndex == 0 || !known[r.LinkIndex] || loop[r.LinkIndex] {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func (m *Manager) deleteRoutes(routes []netlink.Route) error {
	for _, r := range routes {
		del := &netlink.Route{
			LinkIndex: r.LinkIndex,
			Dst:       r.Dst,
			Gw:        r.Gw,
			Table:     r.Table,
			Priority:  r.Priority,
			Tos:       r.Tos,
			Protocol:  r.Protocol,
			Type:      r.Type,
			Scope:     r.Scope,
			Family:    r.Family,
		}
		// ESRCH: already gone, for example with a deleted address.
		if err := m.h.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("deleting route %s dev %d: %w", r.Dst, r.LinkIndex, err)
		}
	}
	return nil
}

// restoreRoutes is the best-effort undo of a failed update: it removes what
// was added and puts back the routes deleted before.
func (m *Manager) restoreRoutes(ctx context.Context, old []netlink.Route) {
	if cur, err := m.replaceableRoutes(); err != nil {
		m.log.ErrorContext(ctx, "restoring routes: listing", "error", err)
	} else if err := m.deleteRoutes(cur); err != nil {
		m.log.ErrorContext(ctx, "restoring routes: deleting", "error", err)
	}
	// Routes without a gateway first, as when adding.
	for _, pass := range []bool{false, true} {
		for _, r := range old {
			if (r.Gw != nil) != pass {
				continue
			}
			r.Flags &= unix.RTNH_F_ONLINK // status bits cannot be set
			if err := m.h.RouteReplace(&r); err != nil {
				m.log.ErrorContext(ctx, "restoring route failed", "dest", r.Dst.String(), "link", r.LinkIndex, "error", err)
			}
		}
	}
}

// ListRoutes returns the main-table IPv4 and IPv6 routes in kata's shape:
// dest as "address/length" ("0.0.0.0/0" or "::/0" for a default route),
// gateway and source (the preferred source) as plain addresses, device
// as the link's name, plus scope, family, flags and the route MTU.
func (m *Manager) ListRoutes(ctx context.Context) ([]*types.Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	list, err := m.listRoutes()
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return list, nil
}

func (m *Manager) listRoutes() ([]*types.Route, error) {
	routes, err := m.mainRoutes()
	if err != nil {
		return nil, err
	}
	links, err := m.links()
	if err != nil {
		return nil, err
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	out := make([]*types.Route, 0, len(routes))
	for _, r := range routes {
		tr := &types.Route{
			Device: names[r.LinkIndex],
			Scope:  uint32(r.Scope),
			Flags:  uint32(r.Flags),
			Mtu:    uint32(r.MTU),
		}
		if r.Family == netlink.FAMILY_V6 {
			tr.Family = types.IPFamily_v6
		}
		if r.Dst != nil {
			tr.Dest = r.Dst.String()
		}
		if r.Gw != nil {
			tr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			tr.Source = r.Src.String()
		}
		out = append(out, tr)
	}
	return out, nil
}

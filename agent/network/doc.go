// Package network carries out the guest network RPCs of the Kata agent API:
// UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes and
// AddARPNeighbors. It talks rtnetlink through a *netlink.Handle, so tests
// (and callers) can point it at any network namespace.
//
// Every request comes from the host, which is not trusted. Requests are
// checked in full before anything is changed. Bad fields fail with
// errdefs.ErrInvalidArgument, and the message names the field, for example
// "interface.IPAddresses[1].mask". Links that do not exist fail with
// errdefs.ErrNotFound, and the message names the device.
//
// Semantics follow kata-agent with these choices:
//   - UpdateInterface finds the link by MAC address and waits a bounded time
//     for a hot-plugged NIC to appear. The requested address list replaces
//     the link's addresses. Kernel-made IPv6 link-local addresses are kept.
//     If the new name is taken by another link, the two links swap names.
//     Only IFF_NOARP is accepted in raw_flags.
//   - UpdateRoutes replaces the main-table routes on non-loopback links:
//     it deletes the routes the kernel did not make, then adds the requested
//     routes, routes without a gateway first. If an add fails, it makes a
//     best-effort attempt to put the old routes back.
//   - AddARPNeighbors adds or replaces neighbour entries. State 0 means
//     NUD_PERMANENT.
package network

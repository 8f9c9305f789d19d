package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
)

// DefaultLinkTimeout is how long UpdateInterface waits for a NIC with the
// requested MAC address to appear. It matches kata's default
// agent.hotplug_timeout.
const DefaultLinkTimeout = 3 * time.Second

// dumpAttempts bounds retries of netlink dumps the kernel reports as
// interrupted (the table changed while it was being read).
const dumpAttempts = 5

// Manager applies the network RPCs to one network namespace. Its methods
// are safe for concurrent use; requests run one at a time.
type Manager struct {
	h            *netlink.Handle
	log          *slog.Logger
	linkTimeout  time.Duration
	pollInterval time.Duration

	mu sync.Mutex
}

// Option changes a Manager's settings.
type Option func(*Manager)

// WithLinkTimeout sets how long UpdateInterface waits for a hot-plugged NIC
// to show up (DefaultLinkTimeout when unset; 0 means look once).
func WithLinkTimeout(d time.Duration) Option {
	return func(m *Manager) {
		if d >= 0 {
			m.linkTimeout = d
		}
	}
}

// WithPollInterval sets how often UpdateInterface looks for the NIC while it
// waits (50ms when unset).
func WithPollInterval(d time.Duration) Option {
	return func(m *Manager) {
		if d > 0 {
			m.pollInterval = d
		}
	}
}

// New returns a Manager that works through h. A nil h uses the network
// namespace of whichever thread makes each call, which for the agent is the
// VM's only namespace. A nil logger discards. The caller keeps ownership of
// h and closes it.
func New(h *netlink.Handle, log *slog.Logger, opts ...Option) *Manager {
	if h == nil {
		// A Handle without sockets opens a fresh socket for every request.
		h = &netlink.Handle{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{h: h, log: log, linkTimeout: DefaultLinkTimeout, pollInterval: 50 * time.Millisecond}
	for _, o := range opts {
		o(m)
	}
	return m
}

// retryDump calls f again while the kernel reports the dump as interrupted.
func retryDump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpAttempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}

func (m *Manager) links() ([]netlink.Link, error) {
	links, err := retryDump(m.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	return links, nil
}

// waitLinkByMAC looks for a non-loopback link with the given MAC address,
// polling until the link timeout passes or ctx ends.
func (m *Manager) waitLinkByMAC(ctx context.Context, mac net.HardwareAddr, device string) (netlink.Link, error) {
	deadline := time.Now().Add(m.linkTimeout)
	for {
		links, err := m.links()
		if err != nil {
			return nil, err
		}
		var found netlink.Link
		matches := 0
		for _, l := range links {
			a := l.Attrs()
			if isLoopback(l) || !bytes.Equal(a.HardwareAddr, mac) {
				continue
			}
			matches++
			if found == nil {
				found = l
			}
		}
		if found != nil {
			if matches > 1 {
				m.log.WarnContext(ctx, "several links have the requested MAC address; using the first",
					"hwaddr", mac.String(), "link", found.Attrs().Name, "matches", matches)
			}
			return found, nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, fmt.Errorf("interface.hwAddr: no link with MAC %s (device %q) appeared within %s: %w",
				mac, device, m.linkTimeout, errdefs.ErrNotFound)
		}
		t := time.NewTimer(min(wait, m.pollInterval))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for link with MAC %s: %w", mac, ctx.Err())
		case <-t.C:
		}
	}
}

func isLoopback(l netlink.Link) bool {
	return l.Attrs().Flags&net.FlagLoopback != 0
}

func isUp(l netlink.Link) bool {
	return l.Attrs().Flags&net.FlagUp != 0
}

package sysinit

import (
	"fmt"
	"log/slog"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LoopbackUp brings the guest's loopback link up. A kernel creates "lo"
// down; with no init system before the agent, nothing else raises it, and
// pods share the guest's network namespace (as in Kata): without it,
// workloads cannot reach 127.0.0.1, and neither can they reach the
// guest-components REST API the agent serves there. Only as PID 1.
func LoopbackUp(log *slog.Logger) error {
	if !IsPID1() {
		return fmt.Errorf("loopback up: refusing, not PID 1: %w", errdefs.ErrFailedPrecondition)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer h.Close()
	if err := setLoopbackUp(h); err != nil {
		return err
	}
	if log != nil {
		log.Info("loopback up")
	}
	return nil
}

// setLoopbackUp raises "lo" through h (tests pass a handle into a network
// namespace they created).
func setLoopbackUp(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if lo.Attrs().EncapType != "loopback" {
		return fmt.Errorf("loopback up: link lo is %q, not a loopback: %w", lo.Attrs().EncapType, errdefs.ErrFailedPrecondition)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

package agent

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Swap on a device or file the host provides. In a confidential guest the
// swapped pages are guest memory in clear on a host-visible disk: the default
// CoCo policy (issue 6) denies these rpcs; they exist for kata parity.

func pciPathFromSlots(slots []uint32) (string, error) {
	if len(slots) == 0 || len(slots) > 8 {
		return "", invalid("PCIPath", "must have 1 to 8 slots, got %d", len(slots))
	}
	parts := make([]string, len(slots))
	for i, s := range slots {
		if s > 0x1f {
			return "", invalid(fmt.Sprintf("PCIPath[%d]", i), "slot %d is out of range", s)
		}
		parts[i] = fmt.Sprintf("%02x", s)
	}
	return strings.Join(parts, "/"), nil
}

func (a *Agent) addSwap(ctx context.Context, slots []uint32) error {
	pci, err := pciPathFromSlots(slots)
	if err != nil {
		return err
	}
	if !a.opts.VM {
		return hostModeRefusal("enable swap")
	}
	dev, err := a.opts.Storage.ResolveDevice(ctx, "blk", pci)
	if err != nil {
		return fmt.Errorf("PCIPath %s: %w", pci, err)
	}
	return swapon(dev)
}

func (a *Agent) addSwapPath(p string) error {
	if p == "" || !filepath.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) {
		return invalid("path", "%q must be an absolute clean path", p)
	}
	if !strings.HasPrefix(p, strings.TrimSuffix(a.opts.Root, "/")+"/") {
		return invalid("path", "%q is outside %s", p, a.opts.Root)
	}
	if !a.opts.VM {
		return hostModeRefusal("enable swap")
	}
	return swapon(p)
}

func swapon(p string) error {
	b, err := unix.BytePtrFromString(p)
	if err != nil {
		return invalid("path", "%q contains a NUL byte", p)
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(b)), 0, 0); e != 0 {
		return fmt.Errorf("swapon %s: %w", p, e)
	}
	return nil
}

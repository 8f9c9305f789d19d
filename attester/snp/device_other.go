//go:build !linux

package snp

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// OpenDevice is only available on Linux.
func OpenDevice(path string) (Device, error) {
	return nil, fmt.Errorf("open %s: %w", path, errdefs.ErrNotImplemented)
}

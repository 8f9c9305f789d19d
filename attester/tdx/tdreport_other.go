//go:build !linux

package tdx

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
)

// GetTDReport is only available on Linux.
func GetTDReport(_ context.Context, device string, _ [64]byte) ([]byte, error) {
	return nil, fmt.Errorf("open %s: %w", device, errdefs.ErrNotImplemented)
}

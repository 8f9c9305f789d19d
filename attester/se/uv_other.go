//go:build !(linux && s390x)

package se

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
)

// DeviceUV performs attestation calls on the Ultravisor device; it exists
// only on linux/s390x.
type DeviceUV struct {
	// Path is the device; DevicePath when empty.
	Path string
}

// Attest implements UV: not available on this platform.
func (d DeviceUV) Attest(ctx context.Context, req AttestRequest) (*AttestResult, error) {
	if err := checkAttest(req); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("uv attest: IBM Secure Execution needs linux/s390x: %w", errdefs.ErrNotImplemented)
}

// Package cca implements the Arm CCA attester: the realm attestation token
// (a CBOR CCA token with the platform and realm claims) obtained through
// configfs-tsm from the arm_cca_guest provider, with the report data
// zero-padded to the 64-byte realm challenge. The evidence is
// guest-components' {"token":[<token bytes as JSON integers>]} (a serde
// Vec<u8>, not base64). CCA offers no extendable runtime register or
// initdata binding through this attester, as upstream.
package cca

import (
	"context"
	"fmt"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tsm"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
)

// Attester is the cca attester.
type Attester struct {
	client configfsi.Client
}

// New returns a cca attester using the configfs-tsm client (tsm.DefaultClient
// in the agent).
func New(client configfsi.Client) *Attester { return &Attester{client: client} }

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeCCA }

// Evidence implements attester.Attester: the CCA token for reportData
// zero-padded to 64 bytes (longer is an error wrapping
// errdefs.ErrInvalidArgument).
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	challenge, err := attester.FitReportData(attester.TeeCCA, reportData)
	if err != nil {
		return nil, fmt.Errorf("cca: challenge: %w", err)
	}
	if a.client == nil {
		return nil, fmt.Errorf("cca: token: no configfs-tsm: %w", errdefs.ErrNotImplemented)
	}
	resp, err := tsm.Get(ctx, a.client, tsm.Request{Provider: tsm.ProviderCCA, InBlob: challenge})
	if err != nil {
		return nil, fmt.Errorf("cca: token: %w", err)
	}
	return MarshalEvidence(resp.OutBlob), nil
}

// MarshalEvidence returns {"token":[...]} with each byte a JSON integer.
func MarshalEvidence(token []byte) []byte {
	b := make([]byte, 0, len(`{"token":[]}`)+4*len(token))
	b = append(b, `{"token":[`...)
	for i, c := range token {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(c), 10)
	}
	return append(b, "]}"...)
}

var _ attester.Attester = (*Attester)(nil)

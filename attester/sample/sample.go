// Package sample implements the sample and sampledevice attesters: evidence
// without hardware, byte-compatible with guest-components' sample attesters
// ({"svn":"1","report_data":"<std base64>"}; sampledevice uses svn "2").
// Trustee's sample verifier checks only that report_data decodes to the
// expected report data, so this is the fallback when no TEE is present.
package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

// Evidence is the sample evidence document. Field order is the wire order.
type Evidence struct {
	SVN        string `json:"svn"`
	ReportData string `json:"report_data"`
}

// Attester is the sample (or sampledevice) attester.
type Attester struct {
	tee attester.Tee
	svn string
}

// New returns the sample attester (primary fallback).
func New() *Attester { return &Attester{tee: attester.TeeSample, svn: "1"} }

// NewDevice returns the sampledevice attester (additional device).
func NewDevice() *Attester { return &Attester{tee: attester.TeeSampleDevice, svn: "2"} }

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return a.tee }

// Evidence implements attester.Attester. reportData is encoded as given.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Both fields are ASCII (digits, base64), so encoding/json's output is
	// exactly serde_json's.
	return json.Marshal(Evidence{SVN: a.svn, ReportData: base64.StdEncoding.EncodeToString(reportData)})
}

// Verify checks evidence the way trustee's sample verifier does: it must
// parse and its report_data must decode to reportData exactly.
func Verify(evidence, reportData []byte) (*Evidence, error) {
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, fmt.Errorf("sample evidence: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	got, err := base64.StdEncoding.DecodeString(ev.ReportData)
	if err != nil {
		return nil, fmt.Errorf("sample evidence: report_data: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if !bytes.Equal(got, reportData) {
		return nil, fmt.Errorf("sample evidence: report_data does not match: %w", errdefs.ErrFailedPrecondition)
	}
	return &ev, nil
}

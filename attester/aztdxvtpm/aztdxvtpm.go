// Package aztdxvtpm implements the az-tdx-vtpm attester (Intel TDX
// confidential VMs on Azure, attested through the paravisor's vTPM). Its
// evidence is guest-components' version 2 document:
//
//	{"version":2,
//	 "tpm_quote":{"signature":"<hex>","message":"<hex TPMS_ATTEST>","pcrs":["<hex>"×24]},
//	 "hcl_report":"<base64url, padded>","td_quote":"<base64url, padded>"}
//
// The report data is written to the vTPM so the regenerated HCL report
// carries it as "user-data" (bound into the TDREPORT REPORTDATA through the
// variable-data hash) and is the quote's qualifying data, unpadded. The
// TDREPORT inside the HCL report is turned into a TD quote by the Azure
// IMDS quote service behind the QuoteService seam. Runtime measurements
// extend SHA-256 PCRs (AAEL on PCR 17) and initdata extends PCR 8, through
// the embedded azvtpm.VTPM.
package aztdxvtpm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azvtpm"
)

// EvidenceVersion is the evidence schema version produced.
const EvidenceVersion = 2

// QuoteService turns a TDREPORT into a TD quote (azvtpm.IMDSClient in the
// agent).
type QuoteService interface {
	TDQuote(ctx context.Context, tdReport []byte) ([]byte, error)
}

// Evidence is the az-tdx-vtpm evidence document. Byte fields are
// base64url with padding (serde_with Base64<UrlSafe>).
type Evidence struct {
	Version   uint32       `json:"version"`
	TPMQuote  azvtpm.Quote `json:"tpm_quote"`
	HCLReport string       `json:"hcl_report"`
	TDQuote   string       `json:"td_quote"`
}

// Attester is the az-tdx-vtpm attester.
type Attester struct {
	*azvtpm.VTPM
	quotes QuoteService
}

// New returns the attester for vtpm with TD quotes from quotes.
func New(vtpm *azvtpm.VTPM, quotes QuoteService) *Attester {
	return &Attester{VTPM: vtpm, quotes: quotes}
}

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeAzTDXvTPM }

// Evidence implements attester.Attester. reportData (1..64 bytes) is used
// as given: written for the HCL report and quoted as qualifying data.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	rd, err := attester.FitReportData(attester.TeeAzTDXvTPM, reportData)
	if err != nil {
		return nil, err
	}
	raw, err := a.HCLReportWithReportData(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("az-tdx-vtpm: %w", err)
	}
	hcl, err := azvtpm.ParseHCLReport(raw)
	if err != nil {
		return nil, fmt.Errorf("az-tdx-vtpm: %w", err)
	}
	if hcl.Type != azvtpm.ReportTypeTDX {
		return nil, fmt.Errorf("az-tdx-vtpm: HCL report holds a %s report: %w", hcl.Type, errdefs.ErrFailedPrecondition)
	}
	if a.quotes == nil {
		return nil, fmt.Errorf("az-tdx-vtpm: no TD quote service: %w", attester.ErrNotSupported)
	}
	td, err := a.quotes.TDQuote(ctx, hcl.HWReport())
	if err != nil {
		return nil, fmt.Errorf("az-tdx-vtpm: TD quote: %w", err)
	}
	q, err := a.Quote(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("az-tdx-vtpm: %w", err)
	}
	return json.Marshal(Evidence{
		Version:   EvidenceVersion,
		TPMQuote:  *q,
		HCLReport: base64.URLEncoding.EncodeToString(raw),
		TDQuote:   base64.URLEncoding.EncodeToString(td),
	})
}

var (
	_ attester.Attester        = (*Attester)(nil)
	_ attester.RuntimeMeasurer = (*Attester)(nil)
	_ attester.InitdataBinder  = (*Attester)(nil)
)

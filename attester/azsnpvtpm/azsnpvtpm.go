// Package azsnpvtpm implements the az-snp-vtpm attester (AMD SEV-SNP
// confidential VMs on Azure, attested through the paravisor's vTPM). Its
// evidence is guest-components' version 2 document:
//
//	{"version":2,
//	 "tpm_quote":{"signature":"<hex>","message":"<hex TPMS_ATTEST>","pcrs":["<hex>"×24]},
//	 "hcl_report":"<base64url, padded>","vcek":"<base64url DER, padded>"}
//
// The report data is written to the vTPM so the regenerated HCL report
// carries it as "user-data" (bound into the SNP REPORT_DATA through the
// variable-data hash) and is the quote's qualifying data, unpadded. The
// VCEK comes from the Azure IMDS THIM endpoint behind the CertSource seam.
// Runtime measurements extend SHA-256 PCRs (AAEL on PCR 17) and initdata
// extends PCR 8, through the embedded azvtpm.VTPM.
package azsnpvtpm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azvtpm"
)

// EvidenceVersion is the evidence schema version produced.
const EvidenceVersion = 2

// CertSource fetches the THIM certificates (azvtpm.IMDSClient in the agent).
type CertSource interface {
	Certificates(ctx context.Context) (*azvtpm.Certificates, error)
}

// Evidence is the az-snp-vtpm evidence document. Byte fields are
// base64url with padding (serde_with Base64<UrlSafe>).
type Evidence struct {
	Version   uint32       `json:"version"`
	TPMQuote  azvtpm.Quote `json:"tpm_quote"`
	HCLReport string       `json:"hcl_report"`
	VCEK      string       `json:"vcek"`
}

// Attester is the az-snp-vtpm attester.
type Attester struct {
	*azvtpm.VTPM
	certs CertSource
}

// New returns the attester for vtpm with the VCEK from certs.
func New(vtpm *azvtpm.VTPM, certs CertSource) *Attester {
	return &Attester{VTPM: vtpm, certs: certs}
}

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeAzSNPvTPM }

// Evidence implements attester.Attester. reportData (1..64 bytes) is used
// as given: written for the HCL report and quoted as qualifying data.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	rd, err := attester.FitReportData(attester.TeeAzSNPvTPM, reportData)
	if err != nil {
		return nil, err
	}
	hcl, err := a.HCLReportWithReportData(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("az-snp-vtpm: %w", err)
	}
	q, err := a.Quote(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("az-snp-vtpm: %w", err)
	}
	if a.certs == nil {
		return nil, fmt.Errorf("az-snp-vtpm: no IMDS client: %w", attester.ErrNotSupported)
	}
	certs, err := a.certs.Certificates(ctx)
	if err != nil {
		return nil, fmt.Errorf("az-snp-vtpm: VCEK: %w", err)
	}
	vcek, err := azvtpm.PEMCertificateToDER(certs.VCEK)
	if err != nil {
		return nil, fmt.Errorf("az-snp-vtpm: %w", err)
	}
	return json.Marshal(Evidence{
		Version:   EvidenceVersion,
		TPMQuote:  *q,
		HCLReport: base64.URLEncoding.EncodeToString(hcl),
		VCEK:      base64.URLEncoding.EncodeToString(vcek),
	})
}

var (
	_ attester.Attester        = (*Attester)(nil)
	_ attester.RuntimeMeasurer = (*Attester)(nil)
	_ attester.InitdataBinder  = (*Attester)(nil)
)

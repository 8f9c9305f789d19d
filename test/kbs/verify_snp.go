package kbs

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/snp"
)

// SNPOptions configures SNPVerifier.
type SNPOptions struct {
	// TrustedRoots maps an AMD product line ("Milan", "Genoa", "Turin")
	// to the ARK/ASK pairs a VCEK or VLEK must chain to. Nil means
	// go-sev-guest's embedded AMD roots (real hardware); tests pass the
	// roots of go-sev-guest's fake signer.
	TrustedRoots map[string][]*trust.AMDRootCerts
	// Getter fetches missing certificates (VCEK, ASK) from AMD's KDS. Nil
	// disables fetching: the evidence must carry its certificate chain,
	// and nothing touches the network.
	Getter trust.HTTPSGetter
	// Now is the time certificates are checked at; time.Now when nil.
	Now func() time.Time
}

// SNPVerifier returns a Verifier for snp evidence (guest-components' shape,
// as attester/snp emits it): it re-encodes the report to its signed bytes,
// checks the signature and the VCEK/VLEK chain with go-sev-guest against
// o.TrustedRoots, then that REPORT_DATA is the expected report data and,
// when init-data was sent, that HOST_DATA is its digest fitted to 32
// bytes. It appraises no measurement or policy: that is the resource
// policy's business, on the claims.
func SNPVerifier(o SNPOptions) Verifier {
	return func(ctx context.Context, ev json.RawMessage, reportData, initdataDigest []byte) (map[string]any, error) {
		var e snp.Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			return nil, fmt.Errorf("snp evidence: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		if e.AttestationReport == nil {
			return nil, fmt.Errorf("snp evidence: no attestation_report: %w", errdefs.ErrInvalidArgument)
		}
		raw, err := e.AttestationReport.Bytes()
		if err != nil {
			return nil, fmt.Errorf("snp evidence: attestation_report: %w", err)
		}
		rep, err := abi.ReportToProto(raw)
		if err != nil {
			return nil, fmt.Errorf("snp evidence: attestation_report: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		att := &spb.Attestation{Report: rep, CertificateChain: &spb.CertificateChain{}}
		for _, c := range e.CertChain {
			switch c.GUID.Name() {
			case "ARK":
				att.CertificateChain.ArkCert = c.Data
			case "ASK":
				att.CertificateChain.AskCert = c.Data
			case "VCEK":
				att.CertificateChain.VcekCert = c.Data
			case "VLEK":
				att.CertificateChain.VlekCert = c.Data
			}
		}
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		vo := &verify.Options{TrustedRoots: o.TrustedRoots, Getter: o.Getter, DisableCertFetching: o.Getter == nil, Now: now()}
		if err := verify.SnpAttestationContext(ctx, att, vo); err != nil {
			return nil, fmt.Errorf("snp report signature or certificate chain: %w: %w", err, errdefs.ErrPermissionDenied)
		}
		if !bytes.Equal(rep.GetReportData(), reportData) {
			return nil, fmt.Errorf("snp report_data %x is not the expected %x: %w", rep.GetReportData(), reportData, errdefs.ErrPermissionDenied)
		}
		if initdataDigest != nil {
			if want := attester.FitDigest(initdataDigest, 32); !bytes.Equal(rep.GetHostData(), want) {
				return nil, fmt.Errorf("snp host_data %x does not bind the init-data digest %x: %w", rep.GetHostData(), want, errdefs.ErrPermissionDenied)
			}
		}
		return snpClaims(e.AttestationReport, rep), nil
	}
}

// snpClaims are trustee's SNP verifier claims: hex byte fields, decoded
// policy, platform info and TCB fields. init_data is HOST_DATA.
func snpClaims(r *snp.Report, p *spb.Report) map[string]any {
	pol, _ := abi.ParseSnpPolicy(r.Policy) // a malformed policy decodes partially; the raw value is a claim too
	pi, _ := abi.ParseSnpPlatformInfo(r.PlatInfo)
	c := map[string]any{
		"measurement":                hex.EncodeToString(p.GetMeasurement()),
		"report_data":                hex.EncodeToString(p.GetReportData()),
		"host_data":                  hex.EncodeToString(p.GetHostData()),
		"init_data":                  hex.EncodeToString(p.GetHostData()),
		"chip_id":                    hex.EncodeToString(p.GetChipId()),
		"family_id":                  hex.EncodeToString(p.GetFamilyId()),
		"image_id":                   hex.EncodeToString(p.GetImageId()),
		"id_key_digest":              hex.EncodeToString(p.GetIdKeyDigest()),
		"author_key_digest":          hex.EncodeToString(p.GetAuthorKeyDigest()),
		"version":                    r.Version,
		"guest_svn":                  r.GuestSVN,
		"vmpl":                       r.VMPL,
		"policy":                     r.Policy,
		"policy_abi_major":           pol.ABIMajor,
		"policy_abi_minor":           pol.ABIMinor,
		"policy_smt_allowed":         pol.SMT,
		"policy_migrate_ma":          pol.MigrateMA,
		"policy_debug_allowed":       pol.Debug,
		"policy_single_socket":       pol.SingleSocket,
		"platform_smt_enabled":       pi.SMTEnabled,
		"platform_tsme_enabled":      pi.TSMEEnabled,
		"reported_tcb_bootloader":    r.ReportedTCB.Bootloader,
		"reported_tcb_tee":           r.ReportedTCB.TEE,
		"reported_tcb_snp":           r.ReportedTCB.SNP,
		"reported_tcb_microcode":     r.ReportedTCB.Microcode,
		"committed_tcb_bootloader":   r.CommittedTCB.Bootloader,
		"committed_tcb_tee":          r.CommittedTCB.TEE,
		"committed_tcb_snp":          r.CommittedTCB.SNP,
		"committed_tcb_microcode":    r.CommittedTCB.Microcode,
		"platform_firmware_version":  fmt.Sprintf("%d.%d.%d", r.Current.Major, r.Current.Minor, r.Current.Build),
		"committed_firmware_version": fmt.Sprintf("%d.%d.%d", r.Committed.Major, r.Committed.Minor, r.Committed.Build),
	}
	if r.ReportedTCB.FMC != nil {
		c["reported_tcb_fmc"] = *r.ReportedTCB.FMC
	}
	return c
}

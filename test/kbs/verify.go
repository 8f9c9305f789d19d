package kbs

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/sample"
)

// Verifier appraises one TEE's evidence. reportData is the expected report
// data already fitted to the TEE's field (attester.FitReportData);
// initdataDigest is the digest of the init-data the guest sent, nil without
// one. It returns the claims that go into the token.
type Verifier func(ctx context.Context, evidence json.RawMessage, reportData, initdataDigest []byte) (map[string]any, error)

// DefaultVerifiers verifies sample, sampledevice and tpm evidence. snp and
// tdx are not among them: their verifiers need the roots to trust (the
// vendors' for hardware, go-sev-guest's fake chain in tests), so a caller
// adds SNPVerifier/TDXVerifier to Options.Verifiers.
func DefaultVerifiers() map[attester.Tee]Verifier {
	return map[attester.Tee]Verifier{
		attester.TeeSample:       SampleVerifier,
		attester.TeeSampleDevice: SampleVerifier,
		attester.TeeTPM:          TPMVerifier,
	}
}

// SampleVerifier checks sample evidence as trustee does: report_data must
// be the expected report data. Sample evidence proves nothing about the
// platform; it cannot check initdata.
func SampleVerifier(_ context.Context, ev json.RawMessage, reportData, _ []byte) (map[string]any, error) {
	e, err := sample.Verify(ev, reportData)
	if err != nil {
		return nil, err
	}
	return map[string]any{"svn": e.SVN, "report_data": hex.EncodeToString(reportData)}, nil
}

// TPMVerifier checks tpm evidence with go-tpm-tools: the quote's signature
// by ak_public, its qualifying data (the report data) and the PCR digest.
// When init-data was sent, PCR 8 must be sha256(0³² ‖ digest), the value
// the tpm attester's initdata binding extends. The AK is not endorsed (no EK
// certificate chain): this is a development KBS; the claims carry the AK's
// fingerprint for a policy to pin.
func TPMVerifier(_ context.Context, ev json.RawMessage, reportData, initdataDigest []byte) (map[string]any, error) {
	var e struct {
		TPMQuote struct {
			Signature string   `json:"signature"`
			Message   string   `json:"message"`
			PCRs      []string `json:"pcrs"`
		} `json:"tpm_quote"`
		AKPublic string `json:"ak_public"`
	}
	if err := json.Unmarshal(ev, &e); err != nil {
		return nil, fmt.Errorf("tpm evidence: %w", err)
	}
	sig, err1 := base64.StdEncoding.DecodeString(e.TPMQuote.Signature)
	msg, err2 := base64.StdEncoding.DecodeString(e.TPMQuote.Message)
	der, err3 := base64.StdEncoding.DecodeString(e.AKPublic)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("tpm evidence base64: %w", err)
	}
	if len(e.TPMQuote.PCRs) != 24 {
		return nil, fmt.Errorf("tpm evidence: %d PCRs, want 24", len(e.TPMQuote.PCRs))
	}
	pcrs := map[uint32][]byte{}
	for i, h := range e.TPMQuote.PCRs {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("tpm evidence: PCR %d is not a hex SHA-256 value", i)
		}
		pcrs[uint32(i)] = b
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("tpm ak_public: %w", err)
	}
	ak, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("tpm ak_public is a %T, want RSA", k)
	}
	q := &tpmpb.Quote{Quote: msg, RawSig: sig, Pcrs: &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pcrs}}
	if err := quote.Verify(q, ak, reportData); err != nil {
		return nil, fmt.Errorf("tpm quote: %w", err)
	}
	if initdataDigest != nil {
		want := sha256.Sum256(append(make([]byte, 32), attester.FitDigest(initdataDigest, 32)...))
		if !bytes.Equal(pcrs[8], want[:]) {
			return nil, fmt.Errorf("tpm PCR 8 does not bind the init-data digest")
		}
	}
	fp := sha256.Sum256(der)
	claims := map[string]any{"ak_sha256": hex.EncodeToString(fp[:]), "report_data": hex.EncodeToString(reportData)}
	for i, h := range e.TPMQuote.PCRs {
		claims[fmt.Sprintf("pcr%02d", i)] = h
	}
	return claims, nil
}

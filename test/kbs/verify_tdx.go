package kbs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tdx"
)

// TDXOptions configures TDXVerifier.
type TDXOptions struct {
	// TrustedRoots are the roots the quote's PCK chain must reach; nil
	// means go-tdx-guest's embedded Intel SGX root CA.
	TrustedRoots *x509.CertPool
	// GetCollateral fetches TCB info and QE identity through Getter and
	// checks the quote's TCB and QE against them; CheckRevocations also
	// checks the CRLs (needs GetCollateral). Both off: only the PCK chain
	// and the quote/QE signatures are checked, with no network.
	GetCollateral    bool
	CheckRevocations bool
	// Getter serves the Intel PCS; required with GetCollateral (pass
	// trust.DefaultHTTPSGetter() to reach the real one).
	Getter trust.HTTPSGetter
	// Now is the time certificates and collateral are checked at;
	// time.Now when nil.
	Now func() time.Time
}

// TDXVerifier returns a Verifier for tdx evidence ({"cc_eventlog",
// "quote"} as attester/tdx emits it): it verifies the quote v4 with
// go-tdx-guest (PCK chain to o.TrustedRoots, QE report and quote
// signatures, collateral when asked), checks REPORTDATA against the
// expected report data and, when init-data was sent, MRCONFIGID against
// its digest fitted to 48 bytes, and when a cc_eventlog is present replays
// it and requires RTMR0..3 to match the quote.
func TDXVerifier(o TDXOptions) Verifier {
	return func(ctx context.Context, ev json.RawMessage, reportData, initdataDigest []byte) (map[string]any, error) {
		if o.GetCollateral && o.Getter == nil {
			return nil, fmt.Errorf("tdx verifier: GetCollateral without a Getter: %w", errdefs.ErrFailedPrecondition)
		}
		var e tdx.Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			return nil, fmt.Errorf("tdx evidence: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		raw, err := base64.StdEncoding.DecodeString(e.Quote)
		if err != nil {
			return nil, fmt.Errorf("tdx evidence quote: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		q, err := abi.QuoteToProto(raw)
		if err != nil {
			return nil, fmt.Errorf("tdx evidence quote: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		quote, ok := q.(*pb.QuoteV4)
		if !ok {
			return nil, fmt.Errorf("tdx evidence quote: %T, want a v4 quote: %w", q, errdefs.ErrNotImplemented)
		}
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		t := now()
		vo := &verify.Options{
			TrustedRoots:     o.TrustedRoots,
			GetCollateral:    o.GetCollateral,
			CheckRevocations: o.CheckRevocations,
			Getter:           o.Getter,
			Now:              &verify.TimeSet{PckCertChain: t, TcbInfo: t, QeIdentity: t, PckCrl: t, RootCaCrl: t},
		}
		if err := verify.TdxQuoteContext(ctx, quote, vo); err != nil {
			return nil, fmt.Errorf("tdx quote signature or PCK chain: %w: %w", err, errdefs.ErrPermissionDenied)
		}
		body := quote.GetTdQuoteBody()
		if !bytes.Equal(body.GetReportData(), reportData) {
			return nil, fmt.Errorf("tdx REPORTDATA %x is not the expected report data %x: %w", body.GetReportData(), reportData, errdefs.ErrPermissionDenied)
		}
		if initdataDigest != nil {
			if want := attester.FitDigest(initdataDigest, tdx.RegisterSize); !bytes.Equal(body.GetMrConfigId(), want) {
				return nil, fmt.Errorf("tdx MRCONFIGID %x does not bind the init-data digest %x: %w", body.GetMrConfigId(), want, errdefs.ErrPermissionDenied)
			}
		}
		claims := tdxClaims(quote)
		if e.CCEventlog != nil {
			n, err := checkCCEventlog(*e.CCEventlog, body.GetRtmrs())
			if err != nil {
				return nil, err
			}
			claims["ccel"] = map[string]any{"events": n}
		}
		return claims, nil
	}
}

// checkCCEventlog replays the event log into RTMR0..3 (event log registers
// 1..4) and compares with the quote. It returns the number of events.
func checkCCEventlog(b64 string, rtmrs [][]byte) (int, error) {
	el, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return 0, fmt.Errorf("tdx evidence cc_eventlog: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	_, entries, err := eventlog.ParseCCEventLog(el)
	if err != nil {
		return 0, fmt.Errorf("tdx evidence cc_eventlog: %w", err)
	}
	if len(rtmrs) != 4 {
		return 0, fmt.Errorf("tdx quote has %d RTMRs, want 4: %w", len(rtmrs), errdefs.ErrInvalidArgument)
	}
	var errs []error
	for i, want := range rtmrs {
		got, err := eventlog.Replay(entries, uint32(i+1), eventlog.AlgSHA384, nil)
		if err != nil {
			return 0, fmt.Errorf("tdx evidence cc_eventlog: RTMR%d: %w", i, err)
		}
		if !bytes.Equal(got, want) {
			errs = append(errs, fmt.Errorf("cc_eventlog replays RTMR%d to %x, quote has %x", i, got, want))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("tdx evidence: %w: %w", err, errdefs.ErrPermissionDenied)
	}
	return len(entries), nil
}

// tdxClaims are trustee's TDX claims shape: quote.header and quote.body
// with hex byte fields, plus init_data (MRCONFIGID) and report_data.
func tdxClaims(q *pb.QuoteV4) map[string]any {
	h, b := q.GetHeader(), q.GetTdQuoteBody()
	x := hex.EncodeToString
	body := map[string]any{
		"tcb_svn":         x(b.GetTeeTcbSvn()),
		"mr_seam":         x(b.GetMrSeam()),
		"mrsigner_seam":   x(b.GetMrSignerSeam()),
		"seam_attributes": x(b.GetSeamAttributes()),
		"td_attributes":   x(b.GetTdAttributes()),
		"xfam":            x(b.GetXfam()),
		"mr_td":           x(b.GetMrTd()),
		"mr_config_id":    x(b.GetMrConfigId()),
		"mr_owner":        x(b.GetMrOwner()),
		"mr_owner_config": x(b.GetMrOwnerConfig()),
		"report_data":     x(b.GetReportData()),
	}
	for i, r := range b.GetRtmrs() {
		body[fmt.Sprintf("rtmr_%d", i)] = x(r)
	}
	return map[string]any{
		"quote": map[string]any{
			"header": map[string]any{
				"version":      h.GetVersion(),
				"att_key_type": h.GetAttestationKeyType(),
				"tee_type":     h.GetTeeType(),
				"qe_svn":       h.GetQeSvn(),
				"pce_svn":      h.GetPceSvn(),
				"vendor_id":    x(h.GetQeVendorId()),
				"user_data":    x(h.GetUserData()),
			},
			"body": body,
		},
		"init_data":   x(b.GetMrConfigId()),
		"report_data": x(b.GetReportData()),
	}
}

package aztdxvtpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azvtpm"
	"github.com/cova-project/cova/attester/azvtpm/azvtpmtest"
	swtpmtest "github.com/cova-project/cova/test/swtpm"
)

// fakeQuoteService stands in for the IMDS TD quote service: it records the
// TDREPORT it is given and answers with a quote embedding it.
type fakeQuoteService struct {
	got [][]byte
	err error
}

func (f *fakeQuoteService) TDQuote(_ context.Context, report []byte) ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.got = append(f.got, bytes.Clone(report))
	return append([]byte("QUOTE:"), report...), nil
}

func TestEvidence(t *testing.T) {
	pv := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeTDX, azvtpmtest.TDReport, azvtpmtest.Options{})
	qs := &fakeQuoteService{}
	a := New(azvtpm.New(pv.Open, 0), qs)
	if a.Tee() != attester.TeeAzTDXvTPM {
		t.Fatal("tee")
	}
	rd := func() []byte { d := sha512.Sum384([]byte("runtime data")); return d[:] }()
	doc, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(doc, &keys); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"hcl_report", "td_quote", "tpm_quote", "version"}) {
		t.Fatalf("evidence keys %v", names)
	}
	var ev Evidence
	if err := json.Unmarshal(doc, &ev); err != nil {
		t.Fatal(err)
	}
	hclRaw, err := base64.URLEncoding.DecodeString(ev.HCLReport)
	if err != nil {
		t.Fatalf("hcl_report: %v", err)
	}
	td, err := base64.URLEncoding.DecodeString(ev.TDQuote)
	if err != nil {
		t.Fatalf("td_quote: %v", err)
	}
	p, err := azvtpmtest.Parse(hclRaw)
	if err != nil || p.Type != azvtpmtest.TypeTDX {
		t.Fatalf("hcl report: %v", err)
	}
	// The TDREPORT sent to the quote service is the one in the HCL report,
	// and its REPORTDATA binds the variable data.
	if len(qs.got) != 1 || !bytes.Equal(qs.got[0], p.HWReport) || !bytes.Equal(td, append([]byte("QUOTE:"), p.HWReport...)) {
		t.Fatal("td_quote is not the quote of the HCL report's TDREPORT")
	}
	if h := sha256.Sum256(p.VarData); !bytes.Equal(p.HWReportData[:32], h[:]) {
		t.Fatal("REPORTDATA does not carry sha256(var data)")
	}
	hcl, err := azvtpm.ParseHCLReport(hclRaw)
	if err != nil {
		t.Fatal(err)
	}
	if err := azvtpm.CheckUserData(hcl, rd); err != nil {
		t.Fatal(err)
	}
	ak, err := hcl.AKPublic()
	if err != nil {
		t.Fatal(err)
	}
	if err := azvtpmtest.CheckQuote(ev.TPMQuote.Signature, ev.TPMQuote.Message, ev.TPMQuote.PCRs, ak, rd); err != nil {
		t.Fatalf("tpm quote: %v", err)
	}
	if err := azvtpmtest.CheckQuote(ev.TPMQuote.Signature, ev.TPMQuote.Message, ev.TPMQuote.PCRs, ak, rd[:32]); err == nil {
		t.Fatal("tpm quote verified for truncated report data")
	}
}

func TestEvidenceErrors(t *testing.T) {
	ctx := context.Background()
	tdx := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeTDX, azvtpmtest.TDReport, azvtpmtest.Options{})
	snp := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, func(rd [64]byte) []byte { return make([]byte, 1184) }, azvtpmtest.Options{})
	for _, tc := range []struct {
		name string
		a    *Attester
		want error
	}{
		{"quote-service-down", New(azvtpm.New(tdx.Open, 0), &fakeQuoteService{err: errdefs.ErrUnavailable}), errdefs.ErrUnavailable},
		{"no-quote-service", New(azvtpm.New(tdx.Open, 0), nil), errdefs.ErrNotImplemented},
		{"snp-hcl-report", New(azvtpm.New(snp.Open, 0), &fakeQuoteService{}), errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.a.Evidence(ctx, []byte("nonce")); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := New(azvtpm.New(tdx.Open, 0), &fakeQuoteService{}).Evidence(ctx, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("empty report data: %v", err)
	}
}

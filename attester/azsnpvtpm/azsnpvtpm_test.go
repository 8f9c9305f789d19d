package azsnpvtpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azvtpm"
	"github.com/cova-project/cova/attester/azvtpm/azvtpmtest"
	swtpmtest "github.com/cova-project/cova/test/swtpm"
	"github.com/google/go-sev-guest/abi"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify"
)

// fakeAMD signs SNP reports with go-sev-guest's test-only AMD chain and
// serves its VCEK like the THIM endpoint.
type fakeAMD struct {
	signer *sevtest.AmdSigner
	err    error
	pem    string
}

func newFakeAMD(t *testing.T) *fakeAMD {
	t.Helper()
	s, err := sevtest.DefaultTestOnlyCertChain(sevtest.GetProductName(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	return &fakeAMD{signer: s, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Vcek.Raw}))}
}

// hw returns an azvtpmtest.HWReport making signed v3 SNP reports at VMPL 0.
func (f *fakeAMD) hw(t *testing.T) azvtpmtest.HWReport {
	return func(rd [64]byte) []byte {
		full := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: rd[:], Version: 3, FMS: 0x00a00f10})
		raw := full[:abi.ReportSize]
		r, s, err := f.signer.Sign(abi.SignedComponent(raw))
		if err == nil {
			err = abi.SetSignature(r, s, raw)
		}
		if err != nil {
			t.Errorf("fake AMD signer: %v", err)
		}
		return raw
	}
}

func (f *fakeAMD) Certificates(context.Context) (*azvtpm.Certificates, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &azvtpm.Certificates{VCEK: f.pem, Chain: "ask+ark"}, nil
}

// checkEvidence verifies evidence the way trustee's az-snp-vtpm verifier
// does (quote signed by the HCL AK, nonce = report data, PCR digest,
// SHA-256(var data) in the SNP REPORT_DATA, user-data, SNP signature by the
// VCEK from the evidence, VMPL 0), plus go-tpm-tools' quote check.
func checkEvidence(t *testing.T, doc []byte, rd []byte) error {
	t.Helper()
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(doc, &keys); err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Equal(names, []string{"hcl_report", "tpm_quote", "vcek", "version"}) {
		t.Fatalf("evidence keys %v", names)
	}
	var ev Evidence
	if err := json.Unmarshal(doc, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Version != 2 {
		t.Fatalf("version %d", ev.Version)
	}
	hclRaw, err := base64.URLEncoding.DecodeString(ev.HCLReport)
	if err != nil {
		t.Fatalf("hcl_report is not padded base64url: %v", err)
	}
	vcekDER, err := base64.URLEncoding.DecodeString(ev.VCEK)
	if err != nil {
		t.Fatalf("vcek is not padded base64url: %v", err)
	}
	p, err := azvtpmtest.Parse(hclRaw)
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != azvtpmtest.TypeSNP {
		t.Fatalf("type %d", p.Type)
	}
	if h := sha256.Sum256(p.VarData); !bytes.Equal(p.HWReportData[:32], h[:]) {
		return errors.New("SNP REPORT_DATA does not carry sha256(var data)")
	}
	hcl, err := azvtpm.ParseHCLReport(hclRaw)
	if err != nil {
		t.Fatal(err)
	}
	if err := azvtpm.CheckUserData(hcl, rd); err != nil {
		return err
	}
	ak, err := hcl.AKPublic()
	if err != nil {
		return err
	}
	if err := azvtpmtest.CheckQuote(ev.TPMQuote.Signature, ev.TPMQuote.Message, ev.TPMQuote.PCRs, ak, rd); err != nil {
		return err
	}
	vcek, err := x509.ParseCertificate(vcekDER)
	if err != nil {
		t.Fatalf("vcek: %v", err)
	}
	if err := verify.SnpReportSignature(p.HWReport, vcek); err != nil {
		return err
	}
	if p.HWReport[0x30] != 0 {
		return errors.New("VMPL not 0")
	}
	return nil
}

func TestEvidenceVerifies(t *testing.T) {
	amd := newFakeAMD(t)
	pv := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, amd.hw(t), azvtpmtest.Options{})
	a := New(azvtpm.New(pv.Open, 0), amd)
	if a.Tee() != attester.TeeAzSNPvTPM {
		t.Fatal("tee")
	}
	ctx := context.Background()
	d384 := sha512.Sum384([]byte("runtime data"))
	for _, tc := range []struct {
		name string
		rd   []byte
	}{
		{"sha384-unpadded", d384[:]},
		{"sha256", func() []byte { d := sha256.Sum256([]byte("x")); return d[:] }()},
		{"sha512", func() []byte { d := sha512.Sum512([]byte("x")); return d[:] }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := a.Evidence(ctx, tc.rd)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkEvidence(t, doc, tc.rd); err != nil {
				t.Fatalf("evidence does not verify: %v", err)
			}
			if err := checkEvidence(t, doc, append(bytes.Clone(tc.rd[:len(tc.rd)-1]), tc.rd[len(tc.rd)-1]^1)); err == nil {
				t.Fatal("evidence verified for other report data")
			}
		})
	}
}

func TestStaleHCLReportFails(t *testing.T) {
	amd := newFakeAMD(t)
	pv := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, amd.hw(t), azvtpmtest.Options{})
	pv.NoRegenerate = true
	doc, err := New(azvtpm.New(pv.Open, 0), amd).Evidence(context.Background(), []byte("fresh nonce"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkEvidence(t, doc, []byte("fresh nonce")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("stale report (user-data of an older request) passed: %v", err)
	}
}

func TestEvidenceErrors(t *testing.T) {
	amd := newFakeAMD(t)
	pv := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, amd.hw(t), azvtpmtest.Options{})
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		a     *Attester
		rd    []byte
		check func(error) bool
	}{
		{"report-data-too-long", New(azvtpm.New(pv.Open, 0), amd), make([]byte, 65), func(err error) bool { return errors.Is(err, errdefs.ErrInvalidArgument) }},
		{"imds-down", New(azvtpm.New(pv.Open, 0), &fakeAMD{err: errdefs.ErrUnavailable}), []byte("n"), func(err error) bool { return errors.Is(err, errdefs.ErrUnavailable) }},
		{"imds-bad-pem", New(azvtpm.New(pv.Open, 0), &fakeAMD{pem: "junk"}), []byte("n"), func(err error) bool { return errors.Is(err, errdefs.ErrInvalidArgument) }},
		{"no-imds", New(azvtpm.New(pv.Open, 0), nil), []byte("n"), func(err error) bool { return errors.Is(err, errdefs.ErrNotImplemented) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.a.Evidence(ctx, tc.rd); !tc.check(err) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestRuntimeMeasurement(t *testing.T) {
	pv := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, newFakeAMD(t).hw(t), azvtpmtest.Options{NoHCL: true})
	var a attester.Attester = New(azvtpm.New(pv.Open, 0), nil)
	m, err := attester.AsRuntimeMeasurer(a)
	if err != nil || m.Register(17) != 17 || m.HashAlg().Size() != 32 {
		t.Fatalf("runtime measurer %v", err)
	}
	d := sha256.Sum256([]byte("initdata"))
	if bound, err := attester.BindInitdata(context.Background(), a, d[:]); err != nil || !bound {
		t.Fatalf("BindInitdata = %v, %v", bound, err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if got, err := m.Measurement(context.Background(), 8); err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR 8 = %x, %v", got, err)
	}
}

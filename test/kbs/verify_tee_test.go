package kbs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	sevabi "github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxtest "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/attester/snp"
	"github.com/cova-project/cova/attester/tdx"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
	kbsclient "github.com/cova-project/cova/cdh/kbs"
	devkbs "github.com/cova-project/cova/test/kbs"
)

const (
	resPath = "default/key/tee"
	// genoaFMS is CPUID 1 EAX of a Genoa part (family 0x19 model 0x11).
	genoaFMS = 0x00a10f10
)

var (
	resource    = []byte("released to an attested TEE")
	initdataDoc = []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"default allow = true\"\n")
)

// fakeSNP is go-sev-guest's fake sev-guest device and fake AMD chain (as
// attester/snp's tests build them), answering any REPORT_DATA like real
// firmware: a v3 Genoa report with the device's HOST_DATA, signed by the
// fake VCEK.
type fakeSNP struct {
	dev      *sevtest.Device
	hostData [32]byte
	roots    map[string][]*trust.AMDRootCerts
}

func newFakeSNP(t *testing.T, hostData []byte) *fakeSNP {
	t.Helper()
	dev, err := sevtest.TcDevice(nil, &sevtest.DeviceOptions{Now: time.Now().Add(-time.Hour), Product: sevabi.SevProductFromCpuid1Eax(genoaFMS)})
	if err != nil {
		t.Fatal(err)
	}
	certs := &trust.ProductCerts{Ask: dev.Signer.Ask, Ark: dev.Signer.Ark, Asvk: dev.Signer.Asvk}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, line := range []string{"Milan", "Genoa"} {
		roots[line] = []*trust.AMDRootCerts{{Product: line, ProductLine: line, ProductCerts: certs}}
	}
	f := &fakeSNP{dev: dev, roots: roots}
	copy(f.hostData[:], hostData)
	return f
}

// Ioctl programs the fake for the requested report data, then answers.
func (f *fakeSNP) Ioctl(cmd uintptr, arg any) (uintptr, error) {
	if ug, ok := arg.(*labi.SnpUserGuestRequest); ok {
		var rd [64]byte
		switch r := ug.ReqData.(type) {
		case *labi.SnpExtendedReportReq:
			rd = r.Data.ReportData
		case *labi.SnpReportReqABI:
			rd = r.ReportData
		}
		raw := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: rd[:], Version: 3, FMS: genoaFMS})
		copy(raw[0xC0:0xE0], f.hostData[:])
		copy(raw[0x1A0:0x1E0], f.dev.Signer.HWID[:])
		raw[0x1E8], raw[0x1E9], raw[0x1EA] = 7, 55, 1
		raw[0x1EC], raw[0x1ED], raw[0x1EE] = 7, 55, 1
		f.dev.ReportDataRsp[hex.EncodeToString(rd[:])] = &sevtest.GetReportResponse{Resp: labi.SnpReportRespABI{Data: raw}}
	}
	return f.dev.Ioctl(cmd, arg)
}

func (f *fakeSNP) Close() error { return nil }

func (f *fakeSNP) attester() *snp.Attester {
	return snp.New(snp.DeviceSource{Open: func() (snp.Device, error) { return f, nil }})
}

// skewed is an attester whose evidence is genuine but for other report
// data than the KBS asked for (a replayed or misdirected report), or
// whose evidence is edited after signing.
type skewed struct {
	attester.Attester
	edit func(rd []byte, ev []byte) ([]byte, []byte)
}

func (s skewed) Evidence(ctx context.Context, rd []byte) ([]byte, error) {
	rd, _ = s.edit(append([]byte{}, rd...), nil)
	ev, err := s.Attester.Evidence(ctx, rd)
	if err != nil {
		return nil, err
	}
	_, ev = s.edit(nil, ev)
	return ev, nil
}

func flipReportData(rd, ev []byte) ([]byte, []byte) {
	if len(rd) > 0 {
		rd[0] ^= 1
	}
	return rd, ev
}

func startTEEKBS(t *testing.T, vs map[attester.Tee]devkbs.Verifier) *devkbs.Server {
	t.Helper()
	return devkbs.StartTB(t, devkbs.Options{Verifiers: vs, Resources: map[string][]byte{resPath: resource}})
}

func fetch(t *testing.T, s *devkbs.Server, a attester.Attester, initdata []byte) ([]byte, error) {
	t.Helper()
	c, err := kbsclient.New(kbsclient.Config{
		URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: a, InitData: initdata,
		RCARAttempts: 1, ResourceAttempts: 1, Backoff: kbsclient.Backoff{Initial: time.Millisecond, Max: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.Resource(context.Background(), "kbs:///"+resPath)
}

// claimsOf returns the TEE's annotated claims of a token.
func claimsOf(t *testing.T, tok string, tee string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Submods map[string]struct {
			Annotated map[string]json.RawMessage `json:"ear.veraison.annotated-evidence"`
		} `json:"submods"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(c.Submods["cpu0"].Annotated[tee], &m); err != nil {
		t.Fatalf("claims of %s: %v (%s)", tee, err, b)
	}
	return m
}

// TestSNPFlow: the KBS client with the snp attester over go-sev-guest's
// fake device attests to the dev KBS running SNPVerifier with the fake AMD
// roots and gets the resource; HOST_DATA must bind the init-data.
func TestSNPFlow(t *testing.T) {
	d := sha256.Sum256(initdataDoc)
	f := newFakeSNP(t, d[:])
	s := startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeSNP: devkbs.SNPVerifier(devkbs.SNPOptions{TrustedRoots: f.roots})})

	for _, tc := range []struct {
		name     string
		a        attester.Attester
		initdata []byte
		want     string // "" for success, else a fragment of the KBS's reason
	}{
		{"no-initdata", f.attester(), nil, ""},
		{"initdata-bound", f.attester(), initdataDoc, ""},
		{"other-initdata", f.attester(), []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"), "host_data"},
		{"wrong-report-data", skewed{f.attester(), flipReportData}, nil, "report_data"},
		{"tampered-measurement", skewed{f.attester(), func(rd, ev []byte) ([]byte, []byte) {
			if ev == nil {
				return rd, nil
			}
			var m map[string]any
			_ = json.Unmarshal(ev, &m)
			m["attestation_report"].(map[string]any)["measurement"].([]any)[0] = 1
			out, _ := json.Marshal(m)
			return rd, out
		}}, nil, "signature or certificate chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Unauthorized
			got, err := fetch(t, s, tc.a, tc.initdata)
			if tc.want == "" {
				if err != nil || !bytes.Equal(got, resource) {
					t.Fatalf("resource = %q, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "401") {
				t.Fatalf("err = %v, want a 401 naming %q", err, tc.want)
			}
			if s.Stats().Unauthorized == before {
				t.Fatal("KBS counted no 401")
			}
		})
	}

	// The claims land in the token.
	c, err := kbsclient.New(kbsclient.Config{URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: f.attester(), InitData: initdataDoc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Attest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cl := claimsOf(t, tok.Raw, "snp")
	if cl["init_data"] != hex.EncodeToString(d[:]) || cl["host_data"] != cl["init_data"] || cl["policy_debug_allowed"] != true ||
		len(cl["measurement"].(string)) != 96 || len(cl["report_data"].(string)) != 128 || cl["reported_tcb_snp"] == nil {
		t.Fatalf("snp claims %v", cl)
	}
}

// TestSNPUntrustedRoots: fake-signed evidence does not pass a verifier with
// AMD's real roots (go-sev-guest's embedded ones), and nothing is fetched.
func TestSNPUntrustedRoots(t *testing.T) {
	f := newFakeSNP(t, nil)
	s := startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeSNP: devkbs.SNPVerifier(devkbs.SNPOptions{})})
	if _, err := fetch(t, s, f.attester(), nil); err == nil || !strings.Contains(err.Error(), "certificate chain") {
		t.Fatalf("fake AMD chain under real roots: %v", err)
	}
	// Without certificates in the evidence and no Getter, nothing is
	// fetched: verification fails offline.
	f.dev.Certs = nil
	s = startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeSNP: devkbs.SNPVerifier(devkbs.SNPOptions{TrustedRoots: f.roots})})
	if _, err := fetch(t, s, f.attester(), nil); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("evidence without certificates: %v", err)
	}
}

func TestSNPVerifierRejectsMalformed(t *testing.T) {
	v := devkbs.SNPVerifier(devkbs.SNPOptions{})
	for _, ev := range []string{`[]`, `{"attestation_report":null,"cert_chain":null}`, `{"attestation_report":{"version":1}}`} {
		if _, err := v(context.Background(), json.RawMessage(ev), make([]byte, 64), nil); err == nil {
			t.Errorf("%s accepted", ev)
		}
	}
	if _, err := v(context.Background(), json.RawMessage(`[]`), nil, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("err = %v, want ErrInvalidArgument", err)
	}
}

// tdxTestTime is when go-tdx-guest's sample production quote's PCK chain
// was valid (as attester/tdx's tests verify it).
var tdxTestTime = func() time.Time { return time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC) }

func sampleQuote(t *testing.T) *tdxpb.QuoteV4 {
	t.Helper()
	q, err := tdxabi.QuoteToProto(testdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	return q.(*tdxpb.QuoteV4)
}

func tdxEvidence(t *testing.T, quote []byte, el []byte) json.RawMessage {
	t.Helper()
	e := tdx.Evidence{Quote: base64.StdEncoding.EncodeToString(quote)}
	if el != nil {
		s := base64.StdEncoding.EncodeToString(el)
		e.CCEventlog = &s
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTDXVerifier verifies go-tdx-guest's sample (genuinely Intel-signed)
// quote offline against the embedded Intel root. Its REPORTDATA is fixed,
// so the binding checks run with that report data; flows over a KBS nonce
// use fakeQE (TestTDXFlowWithTestQE).
func TestTDXVerifier(t *testing.T) {
	q := sampleQuote(t)
	rd, mrConfigID := q.GetTdQuoteBody().GetReportData(), q.GetTdQuoteBody().GetMrConfigId()
	otherRD := bytes.Clone(rd)
	otherRD[0] ^= 1
	patched := sampleQuote(t)
	patched.TdQuoteBody.ReportData = otherRD
	patchedRaw, err := tdxabi.QuoteToAbiBytes(patched)
	if err != nil {
		t.Fatal(err)
	}
	el := append(append(eventlog.SpecIDHeader[:], func() []byte {
		e, _ := eventlog.NewEntry(eventlog.Event{Domain: "cova", Operation: "Boot", Content: "x"}, 4, eventlog.AlgSHA384)
		return e.Marshal()
	}()...), eventlog.EndMarker[:]...)

	offline := devkbs.TDXOptions{Now: tdxTestTime}
	for _, tc := range []struct {
		name     string
		o        devkbs.TDXOptions
		ev       json.RawMessage
		rd       []byte
		initdata []byte
		want     string
	}{
		{"sample-quote", offline, tdxEvidence(t, testdata.RawQuote, nil), rd, nil, ""},
		{"mrconfigid-binds-initdata", offline, tdxEvidence(t, testdata.RawQuote, nil), rd, mrConfigID, ""},
		// go-tdx-guest's canned collateral (served offline) has no TCB level
		// for the sample quote: the collateral path runs and refuses.
		{"collateral-from-test-getter", devkbs.TDXOptions{Now: tdxTestTime, GetCollateral: true, CheckRevocations: true, Getter: tdxtest.TestGetter}, tdxEvidence(t, testdata.RawQuote, nil), rd, nil, "TCB"},
		{"wrong-report-data", offline, tdxEvidence(t, testdata.RawQuote, nil), otherRD, nil, "REPORTDATA"},
		{"other-initdata", offline, tdxEvidence(t, testdata.RawQuote, nil), rd, bytes.Repeat([]byte{7}, 32), "MRCONFIGID"},
		{"report-data-patched-after-signing", offline, tdxEvidence(t, patchedRaw, nil), otherRD, nil, "signature or PCK chain"},
		{"other-roots", devkbs.TDXOptions{Now: tdxTestTime, TrustedRoots: x509.NewCertPool()}, tdxEvidence(t, testdata.RawQuote, nil), rd, nil, "signature or PCK chain"},
		{"pck-expired", devkbs.TDXOptions{Now: func() time.Time { return time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC) }}, tdxEvidence(t, testdata.RawQuote, nil), rd, nil, "signature or PCK chain"},
		{"eventlog-does-not-replay", offline, tdxEvidence(t, testdata.RawQuote, el), rd, nil, "replays RTMR3"},
		{"collateral-without-getter", devkbs.TDXOptions{GetCollateral: true}, tdxEvidence(t, testdata.RawQuote, nil), rd, nil, "Getter"},
		{"not-base64", offline, json.RawMessage(`{"cc_eventlog":null,"quote":"%%"}`), rd, nil, "base64"},
		{"short-quote", offline, tdxEvidence(t, testdata.RawQuote[:100], nil), rd, nil, "quote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := devkbs.TDXVerifier(tc.o)(context.Background(), tc.ev, tc.rd, tc.initdata)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one naming %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body := c["quote"].(map[string]any)["body"].(map[string]any)
			if c["report_data"] != hex.EncodeToString(rd) || body["mr_td"] != hex.EncodeToString(q.GetTdQuoteBody().GetMrTd()) ||
				body["rtmr_3"] != hex.EncodeToString(q.GetTdQuoteBody().GetRtmrs()[3]) || c["init_data"] != hex.EncodeToString(mrConfigID) {
				t.Fatalf("claims %v", c)
			}
		})
	}
}

// TestTDXFlow runs the real client with the tdx attester over
// go-configfs-tsm's fake, which answers the KBS's report data with the
// sample quote patched to carry it. The patched quote cannot verify (only
// Intel's QE can sign one), so the KBS must answer 401 naming the
// signature. Success paths: TestTDXVerifier (the Intel-signed sample quote)
// and TestTDXFlowWithTestQE (a test-rooted QE).
func TestTDXFlow(t *testing.T) {
	var asked []byte
	fake := tsmtest.New("tdx_guest\n", func(in []byte, _ string) ([]byte, []byte, error) {
		asked = bytes.Clone(in)
		q := sampleQuote(t)
		q.TdQuoteBody.ReportData = bytes.Clone(in)
		out, err := tdxabi.QuoteToAbiBytes(q)
		return out, nil, err
	})
	dir := t.TempDir()
	a := tdx.New(tdx.Config{TSM: fake, CCELPath: filepath.Join(dir, "CCEL"), AAELPath: filepath.Join(dir, "eventlog")})
	s := startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeTDX: devkbs.TDXVerifier(devkbs.TDXOptions{Now: tdxTestTime})})
	_, err := fetch(t, s, a, nil)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "tdx quote signature") {
		t.Fatalf("forged quote: %v", err)
	}
	if len(asked) != 64 || bytes.Equal(asked, make([]byte, 64)) {
		t.Fatalf("the attester was asked for report data %x", asked)
	}
	if st := s.Stats(); st.Attested != 0 || st.Unauthorized == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestVerifiersAreOptIn: the default KBS refuses snp and tdx; a caller
// passes SNPVerifier/TDXVerifier in Options.Verifiers, next to the
// defaults.
func TestVerifiersAreOptIn(t *testing.T) {
	def := devkbs.DefaultVerifiers()
	if def[attester.TeeSNP] != nil || def[attester.TeeTDX] != nil {
		t.Fatal("snp/tdx verifiers registered by default")
	}
	vs := devkbs.DefaultVerifiers()
	vs[attester.TeeSNP] = devkbs.SNPVerifier(devkbs.SNPOptions{})
	vs[attester.TeeTDX] = devkbs.TDXVerifier(devkbs.TDXOptions{})
	s := startTEEKBS(t, vs)
	if _, err := fetch(t, s, sample.New(), nil); err != nil {
		t.Fatalf("sample still served next to snp/tdx: %v", err)
	}
}

// fakeQE is a TDX quoting enclave for tests: it re-signs go-tdx-guest's
// sample quote for any REPORTDATA with a test PCK chain whose root has
// Intel's subject names but a test key (the leaf carries the sample PCK
// certificate's SGX extensions). A verifier trusts it only with
// TDXOptions.TrustedRoots = fakeQE.roots.
type fakeQE struct {
	roots      *x509.CertPool
	pckKey     *ecdsa.PrivateKey
	chain      []byte
	mrConfigID []byte
}

func newFakeQE(t *testing.T) *fakeQE {
	t.Helper()
	sample := sampleQuote(t)
	realChain := sample.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	blk, _ := pem.Decode(realChain)
	realPCK, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
	}
	from, to := time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	rootKey, interKey, pckKey := key(), key(), key()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: name("Intel SGX Root CA"), NotBefore: from, NotAfter: to,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: name("Intel SGX PCK Platform CA"), NotBefore: from, NotAfter: to,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	pckTmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: name("Intel SGX PCK Certificate"), NotBefore: from, NotAfter: to,
		SubjectKeyId: []byte{1, 2, 3, 4}, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment}
	for _, e := range realPCK.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}) || e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 31}) {
			pckTmpl.ExtraExtensions = append(pckTmpl.ExtraExtensions, e)
		}
	}
	pckDER, err := x509.CreateCertificate(rand.Reader, pckTmpl, inter, &pckKey.PublicKey, interKey)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range [][]byte{pckDER, interDER, rootDER} {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &fakeQE{roots: pool, pckKey: pckKey, chain: chain}
}

func rawSig(t *testing.T, k *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// quote returns a v4 quote over reportData signed through the test chain.
func (f *fakeQE) quote(t *testing.T, reportData []byte) []byte {
	t.Helper()
	q := sampleQuote(t)
	q.TdQuoteBody.ReportData = bytes.Clone(reportData)
	if f.mrConfigID != nil {
		q.TdQuoteBody.MrConfigId = bytes.Clone(f.mrConfigID)
	}
	sd := q.SignedData
	cd := sd.CertificationData
	qe := cd.GetQeReportCertificationData()
	delta := uint32(len(f.chain)) - qe.PckCertificateChainData.Size
	qe.PckCertificateChainData.PckCertChain = f.chain
	qe.PckCertificateChainData.Size = uint32(len(f.chain))
	cd.Size += delta
	q.SignedDataSize += delta

	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	akPub, _ := ak.PublicKey.ECDH()
	sd.EcdsaAttestationKey = akPub.Bytes()[1:]
	h := sha256.Sum256(append(bytes.Clone(sd.EcdsaAttestationKey), qe.GetQeAuthData().GetData()...))
	qe.QeReport.ReportData = append(h[:], make([]byte, 32)...)
	rep, err := tdxabi.EnclaveReportToAbiBytes(qe.QeReport)
	if err != nil {
		t.Fatal(err)
	}
	qe.QeReportSignature = rawSig(t, f.pckKey, rep)
	hdr, err := tdxabi.HeaderToAbiBytes(q.Header)
	if err != nil {
		t.Fatal(err)
	}
	body, err := tdxabi.TdQuoteBodyToAbiBytes(q.TdQuoteBody)
	if err != nil {
		t.Fatal(err)
	}
	sd.Signature = rawSig(t, ak, append(hdr, body...))
	raw, err := tdxabi.QuoteToAbiBytes(q)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestTDXFlowWithTestQE: the KBS client with the tdx attester whose
// configfs-tsm fake answers through fakeQE attests to the dev KBS running
// TDXVerifier with the test root and gets the resource; MRCONFIGID must
// bind the init-data; the same quotes fail under Intel's real root.
func TestTDXFlowWithTestQE(t *testing.T) {
	qe := newFakeQE(t)
	d := sha256.Sum256(initdataDoc)
	qe.mrConfigID = attester.FitDigest(d[:], 48)
	newAttester := func() *tdx.Attester {
		dir := t.TempDir()
		fake := tsmtest.New("tdx_guest\n", func(in []byte, _ string) ([]byte, []byte, error) { return qe.quote(t, in), nil, nil })
		return tdx.New(tdx.Config{TSM: fake, CCELPath: filepath.Join(dir, "CCEL"), AAELPath: filepath.Join(dir, "eventlog")})
	}
	s := startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeTDX: devkbs.TDXVerifier(devkbs.TDXOptions{TrustedRoots: qe.roots})})
	for _, tc := range []struct {
		name     string
		a        attester.Attester
		initdata []byte
		want     string
	}{
		{"no-initdata", newAttester(), nil, ""},
		{"initdata-bound", newAttester(), initdataDoc, ""},
		{"other-initdata", newAttester(), []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"), "MRCONFIGID"},
		{"wrong-report-data", skewed{newAttester(), flipReportData}, nil, "REPORTDATA"},
		{"tampered-mr-td", skewed{newAttester(), func(rd, ev []byte) ([]byte, []byte) {
			if ev == nil {
				return rd, nil
			}
			var e tdx.Evidence
			_ = json.Unmarshal(ev, &e)
			raw, _ := base64.StdEncoding.DecodeString(e.Quote)
			raw[48+136] ^= 1 // MRTD: header (48) + TEE_TCB_SVN..XFAM (136)
			e.Quote = base64.StdEncoding.EncodeToString(raw)
			out, _ := json.Marshal(e)
			return rd, out
		}}, nil, "signature or PCK chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fetch(t, s, tc.a, tc.initdata)
			if tc.want == "" {
				if err != nil || !bytes.Equal(got, resource) {
					t.Fatalf("resource = %q, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "401") {
				t.Fatalf("err = %v, want a 401 naming %q", err, tc.want)
			}
		})
	}
	real := startTEEKBS(t, map[attester.Tee]devkbs.Verifier{attester.TeeTDX: devkbs.TDXVerifier(devkbs.TDXOptions{})})
	if _, err := fetch(t, real, newAttester(), nil); err == nil || !strings.Contains(err.Error(), "PCK") {
		t.Fatalf("test QE under Intel's root: %v", err)
	}
}

package snp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

var now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeSNP is go-sev-guest's fake sev-guest device with its fake AMD chain.
type fakeSNP struct {
	dev   *sevtest.Device
	fms   uint32
	roots map[string][]*trust.AMDRootCerts
	kds   trust.HTTPSGetter
}

const (
	milanFMS = 0x00a00f10 // family 0x19 model 0x01
	genoaFMS = 0x00a10f10 // family 0x19 model 0x11
)

func newFakeSNP(t *testing.T, fms uint32) *fakeSNP {
	t.Helper()
	product := abi.SevProductFromCpuid1Eax(fms)
	dev, err := sevtest.TcDevice(nil, &sevtest.DeviceOptions{Now: now, Product: product})
	if err != nil {
		t.Fatal(err)
	}
	kds, err := sevtest.FakeKDSFromSigner(dev.Signer)
	if err != nil {
		t.Fatal(err)
	}
	certs := &trust.ProductCerts{Ask: dev.Signer.Ask, Ark: dev.Signer.Ark, Asvk: dev.Signer.Asvk}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, line := range []string{"Milan", "Genoa"} {
		roots[line] = []*trust.AMDRootCerts{{Product: line, ProductLine: line, ProductCerts: certs}}
	}
	return &fakeSNP{dev: dev, fms: fms, roots: roots, kds: kds}
}

// program makes the fake answer reportData with a v3 report carrying
// hostData and the signer's chip ID.
func (f *fakeSNP) program(reportData [64]byte, hostData [32]byte) {
	raw := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: reportData[:], Version: 3, FMS: f.fms})
	copy(raw[0xC0:0xE0], hostData[:])
	copy(raw[0x1A0:0x1E0], f.dev.Signer.HWID[:])
	raw[0x1E8], raw[0x1E9], raw[0x1EA] = 7, 55, 1 // current build/minor/major
	raw[0x1EC], raw[0x1ED], raw[0x1EE] = 7, 55, 1 // committed
	f.dev.ReportDataRsp[hex.EncodeToString(reportData[:])] = &sevtest.GetReportResponse{Resp: labi.SnpReportRespABI{Data: raw}}
}

type nopClose struct{ *sevtest.Device }

func (nopClose) Close() error { return nil }

func (f *fakeSNP) source() Source {
	return DeviceSource{Open: func() (Device, error) { return nopClose{f.dev}, nil }}
}

// verifyEvidence re-encodes the evidence JSON to report bytes and runs
// go-sev-guest's verifier (signature + AMD chain) and validator.
func (f *fakeSNP) verifyEvidence(t *testing.T, evJSON []byte, wantRD []byte, hostData []byte) error {
	t.Helper()
	var ev Evidence
	if err := json.Unmarshal(evJSON, &ev); err != nil {
		t.Fatalf("evidence does not parse back: %v", err)
	}
	raw, err := ev.AttestationReport.Bytes()
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	rep, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatalf("ReportToProto: %v", err)
	}
	att := &spb.Attestation{Report: rep, CertificateChain: &spb.CertificateChain{}}
	for _, c := range ev.CertChain {
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
	if err := verify.SnpAttestation(att, &verify.Options{TrustedRoots: f.roots, Getter: f.kds, Now: now, DisableCertFetching: true}); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return validate.SnpAttestation(att, &validate.Options{
		ReportData:  wantRD,
		HostData:    hostData,
		GuestPolicy: abi.SnpPolicy{Debug: true},
		VMPL:        new(int),
	})
}

func TestEvidenceVerifiesWithGoSevGuest(t *testing.T) {
	for _, tc := range []struct {
		name string
		fms  uint32
		rd   []byte
	}{
		{"milan-sha384-digest", milanFMS, func() []byte { s := sha512.Sum384([]byte("nonce")); return s[:] }()},
		{"genoa-64-bytes", genoaFMS, bytes.Repeat([]byte{0x5a}, 64)},
		{"milan-empty", milanFMS, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSNP(t, tc.fms)
			var padded [64]byte
			copy(padded[:], tc.rd)
			f.program(padded, [32]byte{1})
			a := New(f.source())
			if a.Tee() != attester.TeeSNP {
				t.Fatalf("Tee = %q", a.Tee())
			}
			ev, err := a.Evidence(context.Background(), tc.rd)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.verifyEvidence(t, ev, padded[:], nil); err != nil {
				t.Fatalf("our evidence does not verify: %v", err)
			}
			other := padded
			other[0] ^= 1
			if err := f.verifyEvidence(t, ev, other[:], nil); err == nil {
				t.Fatal("validator accepted the evidence for other report data")
			}
			// Tamper with a signed field in the JSON: the signature must break.
			var m map[string]any
			json.Unmarshal(ev, &m)
			m["attestation_report"].(map[string]any)["guest_svn"] = 9
			tampered, _ := json.Marshal(m)
			if err := f.verifyEvidence(t, tampered, padded[:], nil); err == nil || !strings.Contains(err.Error(), "verify") {
				t.Fatalf("tampered evidence: %v", err)
			}
		})
	}
}

func TestEvidenceShape(t *testing.T) {
	f := newFakeSNP(t, milanFMS)
	var rd [64]byte
	f.program(rd, [32]byte{})
	ev, err := New(f.source()).Evidence(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(ev, []byte(`{"attestation_report":{"version":3,"guest_svn":0,"policy":`)) {
		t.Fatalf("prefix: %.80s", ev)
	}
	keys := topKeys(t, ev, "attestation_report")
	want := []string{"version", "guest_svn", "policy", "family_id", "image_id", "vmpl", "sig_algo", "current_tcb", "plat_info", "key_info", "report_data", "measurement", "host_data", "id_key_digest", "author_key_digest", "report_id", "report_id_ma", "reported_tcb", "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "chip_id", "committed_tcb", "current", "committed", "launch_tcb", "launch_mit_vector", "current_mit_vector", "signature"}
	if !slices.Equal(keys, want) {
		t.Fatalf("report keys\n got %v\nwant %v", keys, want)
	}
	for _, frag := range []string{
		`"family_id":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`,
		`"current_tcb":{"fmc":null,"bootloader":0,"tee":0,"snp":0,"microcode":0}`,
		`"cpuid_fam_id":25,"cpuid_mod_id":1,"cpuid_step":0`,
		`"current":{"major":1,"minor":55,"build":7}`,
		`"launch_mit_vector":null,"current_mit_vector":null`,
		`"signature":{"r":[`,
		`},"cert_chain":[{"cert_type":"ARK","data":[48,`,
	} {
		if !bytes.Contains(ev, []byte(frag)) {
			t.Errorf("evidence lacks %s", frag)
		}
	}
	var got Evidence
	json.Unmarshal(ev, &got)
	var names []string
	for _, c := range got.CertChain {
		names = append(names, c.GUID.Name())
	}
	if !slices.Equal(names, []string{"ARK", "VCEK", "VLEK", "ASK"}) {
		t.Fatalf("cert order %v, want sev crate order ARK VCEK VLEK ASK", names)
	}
}

func topKeys(t *testing.T, doc []byte, field string) []string {
	t.Helper()
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(doc, &outer); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(outer[field]))
	dec.Token()
	var keys []string
	for dec.More() {
		k, _ := dec.Token()
		keys = append(keys, k.(string))
		var skip json.RawMessage
		dec.Decode(&skip)
	}
	return keys
}

// randomReport builds a raw report of a version/generation with random
// content in every defined field and zeros in reserved bytes.
func randomReport(version uint32, gen Generation) []byte {
	// rand.Read never fails.
	b := make([]byte, ReportSize)
	rand.Read(b)
	zero := func(from, to int) { clear(b[from:to]) }
	b[0], b[1], b[2], b[3] = byte(version), 0, 0, 0
	zero(0x4C, 0x50)
	for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} {
		if gen == Turin {
			zero(off+4, off+7)
		} else {
			zero(off+2, off+6)
		}
	}
	if version == 2 {
		zero(0x188, 0x1A0)
		if gen == Turin {
			zero(0x1A8, 0x1E0)
			b[0x1A0] |= 1
		} else {
			b[0x1DF] |= 1
		}
	} else {
		zero(0x18B, 0x1A0)
		switch gen {
		case Milan:
			b[0x188], b[0x189] = 0x19, 0x01
		case Genoa:
			b[0x188], b[0x189] = 0x19, 0xA1
		case Turin:
			b[0x188], b[0x189] = 0x1A, 0x02
		}
	}
	zero(0x1EB, 0x1EC)
	zero(0x1EF, 0x1F0)
	if version >= 5 {
		zero(0x208, 0x2A0)
	} else {
		zero(0x1F8, 0x2A0)
	}
	zero(0x2A0+144, ReportSize)
	return b
}

func TestReportRoundTripByteExact(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint32
		gen     Generation
	}{
		{"v2-genoa", 2, Genoa},
		{"v2-turin", 2, Turin},
		{"v3-milan", 3, Milan},
		{"v3-genoa", 3, Genoa},
		{"v4-genoa", 4, Genoa},
		{"v5-genoa", 5, Genoa},
		{"v5-turin", 5, Turin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				raw := randomReport(tc.version, tc.gen)
				rep, err := ParseReport(raw)
				if err != nil {
					t.Fatal(err)
				}
				if g, _ := rep.Generation(); g != tc.gen {
					t.Fatalf("generation %v, want %v", g, tc.gen)
				}
				if (rep.CurrentTCB.FMC != nil) != (tc.gen == Turin) {
					t.Fatalf("fmc presence wrong for %v", tc.gen)
				}
				if (rep.LaunchMitVector != nil) != (tc.version >= 5) || (rep.CPUIDFamID != nil) != (tc.version >= 3) {
					t.Fatal("optional fields present for the wrong version")
				}
				js, err := json.Marshal(rep)
				if err != nil {
					t.Fatal(err)
				}
				var back Report
				if err := json.Unmarshal(js, &back); err != nil {
					t.Fatal(err)
				}
				out, err := back.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, raw) {
					t.Fatalf("round trip differs at %d", firstDiff(out, raw))
				}
				// go-sev-guest's own encoder agrees on the bytes.
				if p, err := abi.ReportToProto(raw); err == nil {
					if gb, err := abi.ReportToAbiBytes(p); err == nil && !bytes.Equal(gb, raw) {
						t.Logf("note: go-sev-guest re-encodes differently at %d", firstDiff(gb, raw))
					}
				}
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestParseReportRejects(t *testing.T) {
	good := randomReport(3, Milan)
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
		want   error
	}{
		{"short", func(b []byte) []byte { return b[:100] }, errdefs.ErrInvalidArgument},
		{"long", func(b []byte) []byte { return append(b, 0) }, errdefs.ErrInvalidArgument},
		{"version-1", func(b []byte) []byte { b[0] = 1; return b }, errdefs.ErrNotImplemented},
		{"v2-masked-chip-id", func(b []byte) []byte { b[0] = 2; clear(b[0x1A0:0x1E0]); return b }, errdefs.ErrNotImplemented},
		{"unknown-cpu", func(b []byte) []byte { b[0x188] = 0x17; return b }, errdefs.ErrNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseReport(tc.mutate(bytes.Clone(good))); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func guid(s string) GUID { g, _ := ParseGUID(s); return g }

func TestCertTable(t *testing.T) {
	other := guid("11111111-2222-3333-4444-555555555555")
	entries := []CertEntry{
		{guid("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"), []byte("crl")},
		{other, []byte("x")},
		{guid("4ab7b379-bbac-4fe4-a02f-05aef327c782"), []byte("ask")},
		{guid("63da758d-e664-4564-adc5-f4b93be8accd"), []byte("vcek")},
		{guid(extraPlatformInfoGUID), []byte("synthetic")},
		{guid("c0b406a4-a803-4952-9743-3fb6014cd0ae"), []byte("ark")},
	}
	table := MarshalCertTable(entries)
	got, err := ParseCertTable(table)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, e := range got {
		order = append(order, string(e.Data))
	}
	if want := []string{"ark", "vcek", "ask", "crl", "x"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	js, _ := json.Marshal(got[len(got)-1])
	if want := `{"cert_type":{"OTHER":"11111111-2222-3333-4444-555555555555"},"data":[120]}`; string(js) != want {
		t.Fatalf("OTHER entry %s, want %s", js, want)
	}
	var back CertEntry
	if err := json.Unmarshal(js, &back); err != nil || back.GUID != other || string(back.Data) != "x" {
		t.Fatalf("unmarshal OTHER: %+v %v", back, err)
	}
	empty, err := ParseCertTable(make([]byte, 24))
	if err != nil || empty == nil || len(empty) != 0 {
		t.Fatalf("terminator-only table = %v, %v (want empty, non-nil)", empty, err)
	}

	overflow := MarshalCertTable(entries[:1])
	copy(overflow[16:], []byte{0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0})
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"no-terminator", table[:24]},
		{"offset-overflow", overflow},
		{"truncated-entry", table[:10]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseCertTable(tc.in); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestNoCertificates(t *testing.T) {
	f := newFakeSNP(t, milanFMS)
	f.dev.Certs = nil
	var rd [64]byte
	f.program(rd, [32]byte{})
	ev, err := New(f.source()).Evidence(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(ev, []byte(`,"cert_chain":null}`)) {
		t.Fatalf("evidence without certificates ends %q", ev[len(ev)-40:])
	}
	// The verifier fetches the VCEK from the (fake) KDS instead.
	var parsed Evidence
	json.Unmarshal(ev, &parsed)
	raw, _ := parsed.AttestationReport.Bytes()
	rep, _ := abi.ReportToProto(raw)
	att, err := verify.GetAttestationFromReport(rep, &verify.Options{Getter: f.kds, Now: now, TrustedRoots: f.roots})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SnpAttestation(att, &verify.Options{Getter: f.kds, Now: now, TrustedRoots: f.roots}); err != nil {
		t.Fatalf("verify with KDS-fetched VCEK: %v", err)
	}
}

func TestBindInitdata(t *testing.T) {
	digest := sha512.Sum384([]byte("initdata"))
	for _, tc := range []struct {
		name     string
		hostData []byte
		want     error
	}{
		{"match-truncated-sha384", digest[:32], nil},
		{"mismatch", bytes.Repeat([]byte{9}, 32), attester.ErrInitdataMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSNP(t, genoaFMS)
			var hd [32]byte
			copy(hd[:], tc.hostData)
			f.program([64]byte{}, hd)
			bound, err := attester.BindInitdata(context.Background(), New(f.source()), digest[:])
			if !errors.Is(err, tc.want) || (tc.want == nil && (err != nil || !bound)) {
				t.Fatalf("BindInitdata = %v, %v; want %v", bound, err, tc.want)
			}
		})
	}
}

func TestReportDataTooLong(t *testing.T) {
	f := newFakeSNP(t, milanFMS)
	if _, err := New(f.source()).Evidence(context.Background(), make([]byte, 65)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v", err)
	}
}

// TestTSMSource drives the configfs-tsm path with a fake whose outblob is a
// report signed by the fake AMD chain and whose auxblob is the cert table.
func TestTSMSource(t *testing.T) {
	f := newFakeSNP(t, genoaFMS)
	rd := sha512.Sum384([]byte("tsm"))
	var padded [64]byte
	copy(padded[:], rd[:])
	f.program(padded, [32]byte{})
	c := tsmtest.New("sev_guest\n", func(in []byte, priv string) ([]byte, []byte, error) {
		if priv != "0" {
			return nil, nil, fmt.Errorf("privlevel %q, want 0", priv)
		}
		var key [64]byte
		copy(key[:], in)
		report, certs, err := f.source().ExtendedReport(context.Background(), key, 0)
		return report, certs, err
	})
	ev, err := New(TSMSource{Client: c}).Evidence(context.Background(), rd[:])
	if err != nil {
		t.Fatal(err)
	}
	if err := f.verifyEvidence(t, ev, padded[:], make([]byte, 32)); err != nil {
		t.Fatalf("configfs-tsm evidence does not verify: %v", err)
	}
	c.Provider = "tdx_guest\n"
	if _, err := New(TSMSource{Client: c}).Evidence(context.Background(), rd[:]); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("wrong provider: %v", err)
	}
}

func FuzzParseHostData(f *testing.F) {
	f.Add(MarshalCertTable([]CertEntry{{guid("63da758d-e664-4564-adc5-f4b93be8accd"), []byte("vcek")}}), make([]byte, ReportSize))
	f.Add([]byte{}, randomReport(5, Turin))
	f.Fuzz(func(t *testing.T, table, report []byte) {
		if entries, err := ParseCertTable(table); err == nil {
			if _, err := json.Marshal(entries); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := ParseReport(report); err == nil {
			if _, err := r.Bytes(); err != nil {
				t.Fatalf("parsed report does not encode: %v", err)
			}
		}
	})
}

package azvtpm

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/big"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester/azvtpm/azvtpmtest"
)

func snpHW(rd [64]byte) []byte {
	r := make([]byte, SNPReportSize)
	r[0] = 3 // version
	copy(r[0x50:0x90], rd[:])
	return r
}

func testKey(t testing.TB) *rsa.PublicKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey
}

func TestParseHCLReport(t *testing.T) {
	ak := testKey(t)
	for _, tc := range []struct {
		name   string
		typ    uint32
		hw     azvtpmtest.HWReport
		want   ReportType
		hwSize int
	}{
		{"snp", azvtpmtest.TypeSNP, snpHW, ReportTypeSNP, SNPReportSize},
		{"tdx", azvtpmtest.TypeTDX, azvtpmtest.TDReport, ReportTypeTDX, TDReportSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ud := []byte("report data 48 bytes long.......................")
			vd := azvtpmtest.VarData(ak, ud)
			blob := azvtpmtest.BuildHCLReport(tc.typ, tc.hw, vd, azvtpmtest.NVSize)
			r, err := ParseHCLReport(blob)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := azvtpmtest.Parse(blob)
			if err != nil {
				t.Fatal(err)
			}
			if r.Type != tc.want || r.Signature() != HCLSignature || len(r.HWReport()) != tc.hwSize ||
				!bytes.Equal(r.HWReport(), ref.HWReport) || !bytes.Equal(r.VarData, vd) || !bytes.Equal(r.HWReportData(), ref.HWReportData) {
				t.Fatalf("parsed %v, sig %#x, hw %d bytes; differs from the layout", r.Type, r.Signature(), len(r.HWReport()))
			}
			if err := r.CheckBinding(); err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(vd)
			if !bytes.Equal(ref.HWReportData[:32], h[:]) {
				t.Fatal("builder did not bind the variable data")
			}
			got, err := r.UserData()
			if err != nil || !bytes.HasPrefix(got, ud) || len(got) != 64 {
				t.Fatalf("user-data %x, %v", got, err)
			}
			if err := CheckUserData(r, ud); err != nil {
				t.Fatal(err)
			}
			if err := CheckUserData(r, []byte("other")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("other report data accepted: %v", err)
			}
			k, err := r.AKPublic()
			if err != nil || !k.Equal(ak) {
				t.Fatalf("AK %v, %v", k, err)
			}
			// Tamper with the variable data: the binding breaks.
			blob[VarDataOffset+3] ^= 1
			if err := r.CheckBinding(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("tampered variable data: %v", err)
			}
		})
	}
}

func TestParseHCLReportRejects(t *testing.T) {
	ak := testKey(t)
	good := azvtpmtest.BuildHCLReport(azvtpmtest.TypeSNP, snpHW, azvtpmtest.VarData(ak, nil), 0)
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
		field  string
	}{
		{"short", func(b []byte) []byte { return b[:VarDataOffset-1] }, "need at least"},
		{"var-data-overflow", func(b []byte) []byte { le.PutUint32(b[IGVMRequestOffset+16:], 0xffffffff); return b }, "variable_data_size"},
		{"var-data-truncated", func(b []byte) []byte { return b[:len(b)-1] }, "variable_data_size"},
		{"report-type", func(b []byte) []byte { le.PutUint32(b[IGVMRequestOffset+8:], 3); return b }, "report_type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseHCLReport(tc.mutate(bytes.Clone(good)))
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !bytes.Contains([]byte(err.Error()), []byte(tc.field)) {
				t.Fatalf("err = %v, want invalid argument naming %s", err, tc.field)
			}
		})
	}
	t.Run("hash-type", func(t *testing.T) {
		b := bytes.Clone(good)
		le.PutUint32(b[IGVMRequestOffset+12:], 2)
		r, err := ParseHCLReport(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.VarDataSHA256(); !errors.Is(err, errdefs.ErrNotImplemented) {
			t.Fatalf("sha384 var data hash: %v", err)
		}
	})
	t.Run("var-data-json", func(t *testing.T) {
		vd := []byte(`{"keys":[{"kid":"HCLEkPub","kty":"RSA","n":"AQAB","e":"AQAB"}],"user-data":"zz"}`)
		r, err := ParseHCLReport(azvtpmtest.BuildHCLReport(azvtpmtest.TypeSNP, snpHW, vd, 0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.AKPublic(); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("no HCLAkPub: %v", err)
		}
		if _, err := r.UserData(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("bad hex user-data: %v", err)
		}
		r.VarData = []byte("{")
		if _, err := r.UserData(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("bad JSON: %v", err)
		}
	})
}

// FuzzParseHCLReport fuzzes the fields of the IGVM request data and the
// bytes after the fixed part (variable data and padding); the fixed
// 1236-byte area is laid out by the target so the fuzzer's inputs stay
// small (it minimizes every interesting input, which is slow for large
// ones).
func FuzzParseHCLReport(f *testing.F) {
	// A fixed (not real) key keeps the seeds cheap.
	k := &rsa.PublicKey{N: new(big.Int).SetBytes(bytes.Repeat([]byte{0xc5}, 256)), E: 65537}
	vd := azvtpmtest.VarData(k, []byte("nonce"))
	f.Add(uint32(ReportTypeSNP), uint32(1), uint32(len(vd)), vd)
	f.Add(uint32(ReportTypeTDX), uint32(1), uint32(18), []byte(`{"user-data":"00"}`+"\x00\x00"))
	f.Add(uint32(ReportTypeTDX), uint32(2), uint32(0xffffffff), []byte(`{}`))
	f.Fuzz(func(t *testing.T, typ, hashType, size uint32, tail []byte) {
		b := make([]byte, VarDataOffset, VarDataOffset+len(tail))
		le := binary.LittleEndian
		le.PutUint32(b, HCLSignature)
		le.PutUint32(b[IGVMRequestOffset+8:], typ)
		le.PutUint32(b[IGVMRequestOffset+12:], hashType)
		le.PutUint32(b[IGVMRequestOffset+16:], size)
		b = append(b, tail...)
		r, err := ParseHCLReport(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if len(r.HWReportData()) != 64 || len(r.VarData) != int(size) || (r.Type != ReportTypeSNP && r.Type != ReportTypeTDX) {
			t.Fatal("accepted an inconsistent report")
		}
		if err := r.CheckBinding(); err == nil && hashType != 1 {
			t.Fatal("binding checked with an unsupported hash")
		}
		_, _ = r.UserData()
		_, _ = r.AKPublic()
	})
}

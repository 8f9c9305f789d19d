package azvtpm

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/containerd/errdefs"
)

// HCL report layout (the paravisor's attestation report envelope, all
// integers little-endian):
//
//	0     header: signature "HCLA" (u32 0x414C4348), version, report_size,
//	      request_type, status, 3 reserved u32            (32 bytes)
//	32    hardware report, a 1184-byte area: the SNP attestation report, or
//	      the 1024-byte TDX TDREPORT followed by padding
//	1216  IGVM request data: data_size, version, report_type,
//	      report_data_hash_type, variable_data_size      (5 × u32)
//	1236  variable data (variable_data_size bytes of JSON)
//
// The hardware report's report data starts with SHA-256 of the variable
// data, whose JSON carries the vTPM attestation key (kid "HCLAkPub") and the
// "user-data" the guest wrote to the report-data NV index, in hex.
const (
	HCLHeaderSize      = 32
	HWReportOffset     = HCLHeaderSize
	HWReportAreaSize   = SNPReportSize // max(SNP report, TDREPORT)
	IGVMRequestOffset  = HWReportOffset + HWReportAreaSize
	IGVMRequestSize    = 20
	VarDataOffset      = IGVMRequestOffset + IGVMRequestSize
	SNPReportSize      = 1184
	TDReportSize       = 1024
	HCLSignature       = 0x414C4348 // "HCLA" little-endian
	hashTypeSHA256     = 1
	akKeyID            = "HCLAkPub"
	tdReportDataOffset = 128 // REPORTMACSTRUCT.REPORTDATA
	snpReportDataOff   = 0x50
)

// ReportType is the IGVM report type of the hardware report.
type ReportType uint32

// Report types the HCL reports.
const (
	ReportTypeSNP ReportType = 2
	ReportTypeTDX ReportType = 4
)

func (r ReportType) String() string {
	switch r {
	case ReportTypeSNP:
		return "snp"
	case ReportTypeTDX:
		return "tdx"
	}
	return fmt.Sprintf("unknown(%d)", uint32(r))
}

// HCLReport is a parsed HCL report. Its slices alias the parsed bytes.
type HCLReport struct {
	// Raw is the whole NV content (the fixed part, variable data and any
	// trailing padding).
	Raw []byte
	// Type is the hardware report type.
	Type ReportType
	// HashType is the IGVM report_data_hash_type (1 = SHA-256).
	HashType uint32
	// VarData is the variable data (JSON).
	VarData []byte
}

// ParseHCLReport checks the layout of an HCL report the way the
// az-cvm-vtpm crate does (size of the fixed part, variable data inside the
// buffer, report type SNP or TDX) and returns its parts. Errors wrap
// errdefs.ErrInvalidArgument and name the field.
func ParseHCLReport(b []byte) (*HCLReport, error) {
	if len(b) < VarDataOffset {
		return nil, fmt.Errorf("hcl report: %d bytes, need at least %d: %w", len(b), VarDataOffset, errdefs.ErrInvalidArgument)
	}
	le := binary.LittleEndian
	r := &HCLReport{
		Raw:      b,
		Type:     ReportType(le.Uint32(b[IGVMRequestOffset+8:])),
		HashType: le.Uint32(b[IGVMRequestOffset+12:]),
	}
	n := uint64(le.Uint32(b[IGVMRequestOffset+16:]))
	if uint64(len(b))-VarDataOffset < n {
		return nil, fmt.Errorf("hcl report: variable_data_size %d exceeds the %d bytes present: %w", n, len(b)-VarDataOffset, errdefs.ErrInvalidArgument)
	}
	r.VarData = b[VarDataOffset : VarDataOffset+int(n)]
	if r.Type != ReportTypeSNP && r.Type != ReportTypeTDX {
		return nil, fmt.Errorf("hcl report: report_type %d is neither SNP (2) nor TDX (4): %w", uint32(r.Type), errdefs.ErrInvalidArgument)
	}
	return r, nil
}

// Signature returns the header signature (HCLSignature on Azure).
// The parser, like the crate, does not require it.
func (r *HCLReport) Signature() uint32 { return binary.LittleEndian.Uint32(r.Raw) }

// HWReport returns the hardware report: the 1184-byte SNP attestation
// report or the 1024-byte TDREPORT.
func (r *HCLReport) HWReport() []byte {
	if r.Type == ReportTypeTDX {
		return r.Raw[HWReportOffset : HWReportOffset+TDReportSize]
	}
	return r.Raw[HWReportOffset : HWReportOffset+SNPReportSize]
}

// HWReportData returns the 64-byte report data of the hardware report.
func (r *HCLReport) HWReportData() []byte {
	off := snpReportDataOff
	if r.Type == ReportTypeTDX {
		off = tdReportDataOffset
	}
	return r.HWReport()[off : off+64]
}

// VarDataSHA256 returns SHA-256 of the variable data; an error wrapping
// errdefs.ErrNotImplemented when report_data_hash_type is not SHA-256.
func (r *HCLReport) VarDataSHA256() ([32]byte, error) {
	if r.HashType != hashTypeSHA256 {
		return [32]byte{}, fmt.Errorf("hcl report: report_data_hash_type %d: only SHA-256 (1) is supported: %w", r.HashType, errdefs.ErrNotImplemented)
	}
	return sha256.Sum256(r.VarData), nil
}

// CheckBinding checks that the hardware report data starts with SHA-256
// of the variable data (the binding verifiers check). A mismatch wraps
// errdefs.ErrFailedPrecondition.
func (r *HCLReport) CheckBinding() error {
	h, err := r.VarDataSHA256()
	if err != nil {
		return err
	}
	if !bytes.Equal(r.HWReportData()[:32], h[:]) {
		return fmt.Errorf("hcl report: hardware report data does not start with sha256(variable data): %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

type varData struct {
	Keys []struct {
		Kid string `json:"kid"`
		Kty string `json:"kty"`
		N   string `json:"n"`
		E   string `json:"e"`
	} `json:"keys"`
	UserData *string `json:"user-data"`
}

func (r *HCLReport) varData() (*varData, error) {
	var v varData
	if err := json.Unmarshal(r.VarData, &v); err != nil {
		return nil, fmt.Errorf("hcl report: variable data: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return &v, nil
}

// UserData returns the hex-decoded "user-data" of the variable data: the
// report data the guest wrote to the report-data NV index.
func (r *HCLReport) UserData() ([]byte, error) {
	v, err := r.varData()
	if err != nil {
		return nil, err
	}
	if v.UserData == nil {
		return nil, fmt.Errorf("hcl report: variable data: user-data: missing: %w", errdefs.ErrNotFound)
	}
	b, err := hex.DecodeString(*v.UserData)
	if err != nil {
		return nil, fmt.Errorf("hcl report: variable data: user-data: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// AKPublic returns the vTPM attestation key from the variable data (the
// RSA JWK with kid "HCLAkPub"), the key TPM quotes must verify with.
func (r *HCLReport) AKPublic() (*rsa.PublicKey, error) {
	v, err := r.varData()
	if err != nil {
		return nil, err
	}
	for _, k := range v.Keys {
		if k.Kid != akKeyID {
			continue
		}
		if k.Kty != "RSA" {
			return nil, fmt.Errorf("hcl report: key %s: kty %q, want RSA: %w", akKeyID, k.Kty, errdefs.ErrInvalidArgument)
		}
		n, err := base64.RawURLEncoding.DecodeString(k.N)
		if err != nil || len(n) == 0 {
			return nil, fmt.Errorf("hcl report: key %s: n: not base64url: %w", akKeyID, errdefs.ErrInvalidArgument)
		}
		e, err := base64.RawURLEncoding.DecodeString(k.E)
		if err != nil || len(e) == 0 || len(e) > 4 {
			return nil, fmt.Errorf("hcl report: key %s: e: not a base64url exponent: %w", akKeyID, errdefs.ErrInvalidArgument)
		}
		exp := int(new(big.Int).SetBytes(e).Int64())
		if exp < 3 {
			return nil, fmt.Errorf("hcl report: key %s: e: %d: %w", akKeyID, exp, errdefs.ErrInvalidArgument)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}, nil
	}
	return nil, fmt.Errorf("hcl report: variable data: no key %s: %w", akKeyID, errdefs.ErrNotFound)
}
